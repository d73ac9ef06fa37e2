"""results/<experiment>/report.md from the files the p-value and correlation steps wrote, and the final summary.

`python -m tda.results.report --experiment E` (the last step of run_experiment.sh) rewrites report.md
where it changed and prints the mean p-value table, the significance fractions and the figure paths.
"""
from __future__ import annotations

from pathlib import Path

from .. import cli, stats
from ..config import ExperimentConfig, parse_experiment
from ..methods import label, outputs
from ..seeds import load_seeds
from .correlations import CORR_KINDS, FIG_FORMATS, corr_csv_name, corr_fig_stem, read_correlations
from .outputs import markdown_table, read_manifest, write_if_changed
from .pvalues import (ALPHA, PVALUES_MANIFEST, PValueSummary, format_pvalue_summary, hist_name, mean_p_markdown,
                      read_pvalue_tables)
from .trust import TRUST_FIG, trust_section

READING_GUIDE = Path(__file__).with_name("reading_guide.md")
_REDUNDANT = {"method", "model", "n_train", "n_test", "note"}


def sign_groups() -> tuple[list[str], list[str]]:
    """Labels of the registered outputs whose positive score means "j helps i", and those whose negative does."""
    registered = outputs()
    return ([label(o) for o, m in registered.items() if m.sign > 0],
            [label(o) for o, m in registered.items() if m.sign < 0])


def _and(labels: list[str]) -> str:
    return " and ".join([", ".join(labels[:-1]), labels[-1]] if len(labels) > 1 else labels) or "none"


def reading_guide(n_seeds: int) -> str:
    """The "How to read this" section: the tests, the pure-noise reference for `n_seeds`, the sign groups."""
    pos, neg = sign_groups()
    return READING_GUIDE.read_text().format(n_seeds=n_seeds, null_z=stats.null_mean_z_pvalue(max(n_seeds, 2)),
                                            helps_positive=_and(pos), helps_negative=_and(neg))


def _short(v: object, width: int = 60) -> str:
    text = str(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _settings_lines(info: dict) -> list[str]:
    lines = []
    for m, d in info.items():
        settings = ", ".join(f"{k}={_short(v)}" for k, v in sorted(d.get("settings", {}).items())
                             if k not in _REDUNDANT)
        lines.append(f"* {label(m)}: seeds {', '.join(map(str, d['seeds']))}"
                     + (f"; settings: {settings}" if settings else ""))
    return lines


def if_note(info: dict, mats: dict) -> str:
    """IF under the reference LiSSA settings against Grad-Dot: the measured correlation, and what it says."""
    solver = str(info.get("if", {}).get("settings", {}).get("solver", "lissa")).lower()
    m = mats.get(("pearson", "mean"))
    if "if" not in info or solver != "lissa" or m is None or "IF" not in m.index or "GD" not in m.columns:
        return ""
    r = float(m.loc["IF", "GD"])
    note = (f"\n**IF (LiSSA, the reference settings) against Grad-Dot.** Pearson correlation of the mean over "
            f"all pairs: r = {r:+.3f}. One pass of ceil(N/8) steps with scale 1e4 keeps s_test close to a "
            f"multiple of the test gradient, which would make IF = -c * GD (r = -1). ")
    if r <= -0.95:
        note += "Here IF is practically a scaled Grad-Dot: it carries GD's statistics, not an inverse-Hessian influence."
    else:
        note += "Here the curvature term moves IF visibly away from that: it is not just a scaled Grad-Dot."
    return note + "\n"


def loo_note(info: dict, epochs: int) -> str:
    """LOO's protocol and the measured share of its variance that all j of a test sample share."""
    loo = info.get("loo")
    if loo is None:
        return ""
    protocol = str(loo.get("settings", {}).get("protocol", "?"))
    share = loo.get("shared_share")
    note = f"\n**LOO protocol: `{protocol}`.**"
    if share is None:
        return note + "\n"
    note += (f" Of the variance of LOO's tau over all pairs (K = {len(loo['ckpt_epochs'])}), {100 * share:.0f}% is "
             "the part every training sample j shares for a test sample (the per-seed mean over j).")
    if protocol == "paper":
        note += (" Under this protocol tau = L_i(retrained without j) - L_i(checkpoint) also holds the effect of "
                 f"training {epochs} more epochs, the same for every j (see `docs/methods.md`). ")
        note += ("Here that shared part is most of the variance, so LOO's small p-values mostly reflect the "
                 "continued training, not the removal of j." if share >= 0.5 else
                 "Here that shared part is the smaller share, so most of the variance is specific to j.")
        note += " `python run_loo.py --protocol paired` or `scratch` measures the removal alone."
    return note + "\n"


def _in_order(names: object) -> list[str]:
    """Registered outputs first, in registry order (the manifest's JSON sorted its keys), then any others."""
    names = set(names)
    return [o for o in outputs() if o in names] + sorted(names - set(outputs()))


def build_report(cfg: ExperimentConfig) -> str:
    """report.md of an experiment from the files in results/<experiment>/ (figures embedded)."""
    d = cfg.results_dir
    mean_p, sig = read_pvalue_tables(cfg)
    info = read_manifest(d / PVALUES_MANIFEST).get("info", {})
    info = {m: info[m] for m in _in_order(info)}
    mats = read_correlations(cfg)
    n_seeds = max((len(v["seeds"]) for v in info.values()), default=len(load_seeds(cfg.root)))
    absent = [label(m) for m in outputs() if m not in info]
    parts = [f"# Bayesian TDA results: {cfg.name}\n",
             f"Model `{cfg.model}`, task `{cfg.task}`, {cfg.n_train} training samples "
             f"({cfg.num_per_class} per class), checkpoints after epochs "
             f"{', '.join(map(str, cfg.ckpt_epochs))}. Regenerate with "
             f"`bash run_experiment.sh {cfg.name}`.\n\n",
             "Methods and seeds used:\n\n", "\n".join(_settings_lines(info)) + "\n"]
    if absent:
        parts.append(f"\nNot included (no scores with >= 2 seeds): {', '.join(absent)}.\n")
    parts.append("\n" + reading_guide(n_seeds))
    parts.append(if_note(info, mats))
    parts.append(loo_note(info, cfg.epochs))
    parts.append("\n## Mean p-value (the paper's table)\n\nMean over all train-test pairs of the z-test "
                 "p-value, rows = number K of last checkpoints averaged per seed. "
                 "(`mean_p_values.csv`; per-pair values in `pvalues_<method>_across_<K>_ckpts.csv`, "
                 "rows = train dataset indices, columns = test dataset indices; every pair's mu, sigma, SNR, both "
                 "p-values and BH q-value, one row per pair and K, in `pairs_<method>.parquet`.)\n\n")
    parts.append(mean_p_markdown(mean_p, sig))
    cols = ["method", "K", "n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05",
            "t_frac_bh_lt_0.05"]
    parts.append(f"\n## Fraction of pairs with p < {ALPHA}\n\nz = paper's test, t = t-test on the mean, "
                 "bh = after Benjamini-Hochberg (`significance.csv`).\n\n")
    parts.append(markdown_table(sig[cols].set_index("method")))
    parts.append(trust_section(d, sig))
    parts.append("\n## p-value histograms\n\n")
    for m in info:
        parts.append(f"![{label(m)} p-values]({hist_name(m)})\n\n")
    if mats:
        pos, neg = sign_groups()
        parts.append(f"## Correlations between methods (K = {cfg.n_ckpts})\n\nEach cell correlates two methods' "
                     "mu, sigma or SNR over all train-test pairs. Remember the signs: agreement between "
                     f"{{{', '.join(pos)}}} and {{{', '.join(neg)}}} shows as a negative correlation.\n\n")
        for kind in CORR_KINDS:
            if any(kk == kind for kk, _ in mats):
                parts.append(f"![{kind} correlations]({corr_fig_stem(kind)}.png)\n\n"
                             f"({corr_fig_stem(kind)}.pdf; CSV: `{corr_csv_name(kind, '<mean|std|snr>')}`)\n\n")
    else:
        parts.append(f"Correlations: not computed yet (run `python run_correlations.py --experiment {cfg.name}`).\n")
    return "".join(parts)


def write_report(cfg: ExperimentConfig) -> Path:
    """(Re)write results/<experiment>/report.md, atomically and only where its content changed."""
    path = cfg.results_dir / "report.md"
    write_if_changed(path, build_report(cfg))
    return path


def figure_paths(cfg: ExperimentConfig) -> list[Path]:
    """The figures that exist in results/<experiment>/, histograms first."""
    d = cfg.results_dir
    used = read_manifest(d / PVALUES_MANIFEST).get("info", {})
    hists = [d / hist_name(m) for m in _in_order(used) if (d / hist_name(m)).exists()]
    corr = [d / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in FIG_FORMATS
            if (d / f"{corr_fig_stem(k)}.{e}").exists()]
    trusted = [d / TRUST_FIG] if (d / TRUST_FIG).exists() else []
    return hists + trusted + corr


def main(argv: list[str] | None = None) -> None:
    """Write report.md and print the summary of an experiment (the last step of run_experiment.sh)."""
    p = cli.parser("Write results/<experiment>/report.md and print the tables and figure paths.")
    cli.add_experiment_args(p, seeds=False)
    args = p.parse_args(argv)
    cfg = parse_experiment(args.experiment)
    mean_p, sig = read_pvalue_tables(cfg)
    path = write_report(cfg)
    print(format_pvalue_summary(PValueSummary(mean_p, sig, [], True, [])))
    print("Figures:")
    for f in figure_paths(cfg):
        print(f"  {f}")
    print(f"Report: {path}")


if __name__ == "__main__":
    cli.run(main)
