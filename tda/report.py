"""The results steps of DESIGN sections 6-7: p-value tables, significance, correlations, figures, report.md.

Resume rule (DESIGN 7). Every output is a deterministic function of the score files it is computed
from. A hidden manifest in results/<experiment>/ records, per output, the fingerprint (seed, size,
mtime) of those score files. An output whose file exists and whose recorded fingerprint equals the
current one is finished and is not recomputed; a step whose outputs are all finished does nothing.
Everything else is computed and written atomically, but only where the bytes differ from the file on
disk, so a rerun after a kill at any point rewrites no finished file and ends identical to an
uninterrupted run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import cli, io, plots, stats
from .config import ExperimentConfig, TDAError, parse_experiment
from .seeds import load_seeds

METHODS = ("loo", "ats", "if", "gd", "gc")
LABELS = {"loo": "LOO", "ats": "ATS", "if": "IF", "gd": "GD", "gc": "GC"}
SCRIPTS = io.METHOD_SCRIPTS
ALPHA = 0.05
CORR_KINDS = ("pearson", "spearman")
CORR_STATS = {"mean": "mean (mu)", "std": "std (sigma)", "snr": "SNR (mu/sigma)"}
TEST_NAMES = {"z": "z-test on SNR (paper)", "t": "t-test on the mean"}
PVALUES_MANIFEST = ".pvalues_manifest.json"
CORR_MANIFEST = ".correlations_manifest.json"

Log = Callable[[str], None]


# ---------------------------------------------------------------- inputs
def score_files(cfg: ExperimentConfig, method: str, seeds: list[int]) -> dict[int, Path]:
    """The existing score files of one method, seed -> path, in random_seeds.pt order."""
    return {s: cfg.scores_path(method, s) for s in seeds if cfg.scores_path(method, s).exists()}


def fingerprint(files: dict[int, Path]) -> list[list[int]]:
    """What an output depends on: (seed, size, mtime_ns) of each score file it reads."""
    out = []
    for s, p in files.items():
        st = p.stat()
        out.append([int(s), int(st.st_size), int(st.st_mtime_ns)])
    return out


@dataclass
class Inventory:
    """Which methods have enough seeds (>= 2, for sigma), and what is missing, found without loading."""

    cfg: ExperimentConfig
    seeds: list[int]
    files: dict[str, dict[int, Path]]  # usable methods only
    missing_seeds: dict[str, list[int]] = field(default_factory=dict)  # usable methods with gaps
    absent: list[str] = field(default_factory=list)  # no score file at all
    too_few: dict[str, list[int]] = field(default_factory=dict)  # exactly one seed: no sigma

    @property
    def methods(self) -> list[str]:
        return list(self.files)

    def fp(self, method: str) -> list[list[int]]:
        return fingerprint(self.files[method])

    def fp_all(self) -> dict[str, list[list[int]]]:
        return {m: self.fp(m) for m in self.methods}

    def fix(self, methods: list[str]) -> str:
        """The commands that produce the scores of `methods`."""
        scripts = list(dict.fromkeys(SCRIPTS[m] for m in methods))
        return "; ".join(f"python {s} --experiment {self.cfg.name} --seed_id all" for s in scripts)

    def describe(self) -> list[str]:
        """One line per method that is missing or incomplete."""
        lines = []
        for m in self.absent:
            lines.append(f"{LABELS[m]}: no scores in {self.cfg.scores_dir / m}/ (run `{self.fix([m])}`)")
        for m, have in self.too_few.items():
            lines.append(f"{LABELS[m]}: only seed {have[0]} has scores, sigma needs >= 2 seeds: "
                         f"left out (run `{self.fix([m])}`)")
        for m, miss in self.missing_seeds.items():
            lines.append(f"{LABELS[m]}: using {len(self.files[m])} of {len(self.seeds)} seeds, "
                         f"missing seeds {', '.join(map(str, miss))} (run `{self.fix([m])}`)")
        return lines


def take_inventory(cfg: ExperimentConfig, methods: tuple[str, ...] | list[str], need: int = 1) -> Inventory:
    """Find the score files of `methods`; a one-line TDAError naming the scripts when fewer than `need` are usable."""
    seeds = load_seeds(cfg.root)
    inv = Inventory(cfg=cfg, seeds=seeds, files={})
    for m in methods:
        files = score_files(cfg, m, seeds)
        if not files:
            inv.absent.append(m)
        elif len(files) < 2:
            inv.too_few[m] = list(files)
        else:
            inv.files[m] = files
            miss = [s for s in seeds if s not in files]
            if miss:
                inv.missing_seeds[m] = miss
    if len(inv.methods) < need:
        lacking = [m for m in methods if m not in inv.files]
        if not inv.methods:
            what = f"no TDA scores with >= 2 seeds for {cfg.name} in {cfg.scores_dir}/"
        else:
            what = (f"correlations need >= {need} methods with >= 2 seeds, {cfg.name} has only "
                    f"{', '.join(LABELS[m] for m in inv.methods)}")
        raise TDAError(f"{what}: run `{inv.fix(lacking)}` first")
    return inv


@dataclass
class MethodScores:
    """All seeds' scores of one method, [S, C, N, M] float64, with their dataset indices."""

    method: str
    seeds: list[int]
    scores: np.ndarray
    train_indices: list[int]
    test_indices: list[int]
    ckpt_epochs: list[int]
    settings: dict


def load_method(inv: Inventory, method: str) -> MethodScores:
    """Load and check one method's score files: same shape, checkpoints and indices for every seed."""
    cfg = inv.cfg
    arrays, ref, common = [], None, None
    for s in inv.files[method]:
        d = io.load_scores(cfg, method, s)
        fix = f"delete it and run `python {SCRIPTS[method]} --experiment {cfg.name} --seed_id all`"
        if not isinstance(d, dict) or "scores" not in d:
            raise TDAError(f"corrupt {method} scores {cfg.scores_path(method, s)}: {fix}")
        sc = d["scores"]
        meta = (tuple(sc.shape), list(map(int, d["train_indices"])), list(map(int, d["test_indices"])),
                list(map(int, d["ckpt_epochs"])))
        if sc.ndim != 3 or sc.shape[0] != cfg.n_ckpts or sc.shape[1:] != (len(meta[1]), len(meta[2])):
            raise TDAError(f"{method} scores {cfg.scores_path(method, s)} have shape {tuple(sc.shape)}, expected "
                           f"[{cfg.n_ckpts}, n_train, n_test] matching its index lists: {fix}")
        if ref is None:
            ref = (s, meta, dict(d.get("settings", {})))
        elif meta != ref[1]:
            raise TDAError(f"{method} scores of seed {s} do not match seed {ref[0]} (shape, indices or "
                           f"checkpoints differ): {fix}")
        settings = dict(d.get("settings", {}))
        common = settings if common is None else {k: v for k, v in common.items()
                                                  if k in settings and str(settings[k]) == str(v)}
        arrays.append(sc.double().numpy())
    _, (_, train_idx, test_idx, epochs), _ = ref
    # per-seed values (seed, timing) differ between files: keep the settings all seeds share
    return MethodScores(method, list(inv.files[method]), np.stack(arrays), train_idx, test_idx, epochs, common)


# ---------------------------------------------------------------- writing
def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _json(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"


def _digest(fp) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]


def _write_bytes(raw: bytes) -> Callable[[str], None]:
    def writer(tmp: str) -> None:
        Path(tmp).write_bytes(raw)
    return writer


class Outputs:
    """The outputs of one step and their manifest: finished-ness, byte-compared atomic writes."""

    def __init__(self, directory: Path, manifest_name: str, overwrite: bool):
        self.dir = Path(directory)
        self.manifest_path = self.dir / manifest_name
        self.manifest = _read_manifest(self.manifest_path)
        self.recorded: dict = dict(self.manifest.get("outputs", {}))
        self.overwrite = overwrite
        self.written: list[Path] = []
        self.kept: list[Path] = []

    def finished(self, name: str, fp) -> bool:
        """True when `name` exists and was computed from inputs with fingerprint `fp` (and no --overwrite)."""
        return (not self.overwrite and (self.dir / name).exists()
                and self.recorded.get(name) == _digest(fp))

    def all_finished(self, expected: dict[str, object]) -> bool:
        return all(self.finished(n, fp) for n, fp in expected.items())

    def write(self, name: str, data: bytes | str, fp) -> Path:
        """Write `data` atomically unless the file already holds exactly these bytes; record its inputs."""
        path = self.dir / name
        raw = data.encode() if isinstance(data, str) else data
        if path.exists() and path.read_bytes() == raw:
            self.kept.append(path)
        else:
            io.atomic_write_with(path, _write_bytes(raw))
            self.written.append(path)
        self.recorded[name] = _digest(fp)
        self.save_manifest()
        return path

    def save_manifest(self, **extra) -> None:
        self.manifest.update(extra)
        self.manifest["outputs"] = self.recorded
        text = _json(self.manifest)
        if not self.manifest_path.exists() or self.manifest_path.read_text() != text:
            io.atomic_write_with(self.manifest_path, _write_bytes(text.encode()))


def markdown_table(df: pd.DataFrame, fmt: str = "{:.4f}") -> str:
    """A DataFrame as a GitHub markdown table (floats formatted with `fmt`)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else fmt.format(v)
        return str(v)
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in zip(df.index, df.itertuples(index=False)):  # itertuples keeps int columns int
        lines.append("| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def _figure(outputs: Outputs, stem: str, fig, fp, formats=("png",)) -> list[Path]:
    paths = [outputs.write(f"{stem}.{fmt}", plots.figure_bytes(fig, fmt), fp) for fmt in formats]
    plots.close(fig)
    return paths


# ---------------------------------------------------------------- p-values (DESIGN 6)
def pvalue_csv_name(method: str, k: int) -> str:
    return f"pvalues_{method}_across_{k}_ckpts.csv"


def hist_name(method: str) -> str:
    return f"pvalue_hist_{method}.png"


AGG_PVALUE_FILES = ("mean_p_values.csv", "mean_p_values.md", "significance.csv")


def _pvalue_outputs(inv: Inventory) -> dict[str, object]:
    ks = range(1, inv.cfg.n_ckpts + 1)
    expected: dict[str, object] = {}
    for m in inv.methods:
        fp = inv.fp(m)
        expected.update({pvalue_csv_name(m, k): fp for k in ks})
        expected[hist_name(m)] = fp
    expected.update({n: inv.fp_all() for n in AGG_PVALUE_FILES})
    return expected


@dataclass
class PValueSummary:
    """What run_pvalues.py prints: the paper's table, the significance fractions, the figures."""

    mean_p: pd.DataFrame
    significance: pd.DataFrame
    figures: list[Path]
    skipped: bool
    notes: list[str]


def significance_row(method: str, k: int, st: stats.SeedStats, pz: np.ndarray, pt: np.ndarray) -> dict:
    """One row of significance.csv: fractions of pairs with p < 0.05, raw and after Benjamini-Hochberg."""
    return {
        "method": LABELS[method], "K": k, "n_seeds": st.n, "n_pairs": int(pz.size),
        "n_zero_sigma": int((st.sigma == 0).sum()),
        "z_mean_p": float(pz.mean()),
        "z_frac_p_lt_0.05": stats.fraction_below(pz, ALPHA),
        "z_frac_bh_lt_0.05": stats.fraction_below(stats.benjamini_hochberg(pz), ALPHA),
        "t_mean_p": float(pt.mean()),
        "t_frac_p_lt_0.05": stats.fraction_below(pt, ALPHA),
        "t_frac_bh_lt_0.05": stats.fraction_below(stats.benjamini_hochberg(pt), ALPHA),
    }


def pvalue_frame(p: np.ndarray, ms: MethodScores) -> pd.DataFrame:
    """Per-pair p-values labelled by dataset indices: rows train samples j, columns test samples i."""
    return pd.DataFrame(p, index=pd.Index(ms.train_indices, name="train_index"),
                        columns=pd.Index(ms.test_indices, name="test_index"))


def pvalues_step(cfg: ExperimentConfig, methods: tuple[str, ...] | list[str] = METHODS, overwrite: bool = False,
                 log: Log = print) -> PValueSummary:
    """Per method and K = 1..5: per-pair p-values, the mean p-value table, significance, histograms."""
    inv = take_inventory(cfg, methods)
    notes = inv.describe()
    for line in notes:
        log(line)
    out = Outputs(cfg.results_dir, PVALUES_MANIFEST, overwrite)
    expected = _pvalue_outputs(inv)
    figures = [cfg.results_dir / hist_name(m) for m in inv.methods]
    if out.all_finished(expected) and set(out.manifest.get("info", {})) == set(inv.methods):
        log(f"p-values of {cfg.name} are up to date (from {', '.join(LABELS[m] for m in inv.methods)}): "
            "nothing recomputed (--overwrite to redo)")
        return PValueSummary(*read_pvalue_tables(cfg), figures=figures, skipped=True, notes=notes)

    ks = list(range(1, cfg.n_ckpts + 1))
    mean_p, rows, info = {}, [], {}
    for m in tqdm(inv.methods, desc="p-values", leave=False):
        fp = inv.fp(m)
        ms = load_method(inv, m)
        info[m] = {"seeds": ms.seeds, "n_train": len(ms.train_indices), "n_test": len(ms.test_indices),
                   "ckpt_epochs": ms.ckpt_epochs, "settings": ms.settings,
                   "shared_share": stats.shared_variance_share(stats.average_last_k(ms.scores, cfg.n_ckpts))}
        by_test: dict[str, dict[int, np.ndarray]] = {TEST_NAMES["z"]: {}, TEST_NAMES["t"]: {}}
        for k in ks:
            st = stats.stats_across_k(ms.scores, k)
            pz, pt = stats.z_pvalues(st.snr), stats.t_pvalues(st)
            by_test[TEST_NAMES["z"]][k], by_test[TEST_NAMES["t"]][k] = pz, pt
            mean_p.setdefault(LABELS[m], {})[k] = float(pz.mean())
            rows.append(significance_row(m, k, st, pz, pt))
            name = pvalue_csv_name(m, k)
            if not out.finished(name, fp):
                # float32 scores carry ~7 significant digits: more would only be noise
                out.write(name, pvalue_frame(pz, ms).to_csv(float_format="%.7g"), fp)
        if not out.finished(hist_name(m), fp):
            fig = plots.pvalue_histogram(by_test, LABELS[m], len(ms.seeds))
            _figure(out, hist_name(m).removesuffix(".png"), fig, fp)
        del ms

    table = pd.DataFrame(mean_p)
    table.index.name = "K"
    sig = pd.DataFrame(rows)
    fp_all = inv.fp_all()
    out.save_manifest(info=info)  # before the aggregates: a finished table always has its report info
    out.write("mean_p_values.csv", table.to_csv(), fp_all)
    out.write("mean_p_values.md", mean_p_markdown(table, sig), fp_all)
    out.write("significance.csv", sig.to_csv(index=False), fp_all)
    log(f"wrote {len(out.written)} files to {cfg.results_dir}/ ({len(out.kept)} unchanged)")
    return PValueSummary(table, sig, figures, skipped=False, notes=notes)


def mean_p_markdown(table: pd.DataFrame, significance: pd.DataFrame) -> str:
    """The paper's table: mean p-value over all train-test pairs, rows K checkpoints, columns methods."""
    t = table.copy()
    t.index = [f"{k} ckpt" + ("s" if k > 1 else "") for k in t.index]
    t.index.name = "K"
    return markdown_table(t) + "\n" + null_reference(significance) + "\n"


def null_reference(significance: pd.DataFrame) -> str:
    """What pure noise would give: the z-test's p-values are not uniform, so its mean is not 0.5."""
    ns = sorted(set(int(n) for n in significance["n_seeds"]))
    refs = ", ".join(f"{stats.null_mean_z_pvalue(n):.3f} with {n} seeds" for n in ns)
    return (f"Pure-noise reference (true mean attribution 0, Gaussian across seeds): mean z-test p-value "
            f"{refs}; mean t-test p-value 0.5.")


def read_pvalue_tables(cfg: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The mean p-value table and significance.csv as written by run_pvalues.py."""
    d = cfg.results_dir
    missing = [n for n in ("mean_p_values.csv", "significance.csv") if not (d / n).exists()]
    if missing:
        raise TDAError(f"missing {d / missing[0]}: run `python run_pvalues.py --experiment {cfg.name}` first")
    return pd.read_csv(d / "mean_p_values.csv", index_col=0), pd.read_csv(d / "significance.csv")


# ---------------------------------------------------------------- correlations (DESIGN 6)
def corr_csv_name(kind: str, stat: str) -> str:
    return f"correlation_{kind}_{stat}.csv"


def corr_fig_stem(kind: str) -> str:
    return f"correlations_{kind}"


def _corr_outputs(inv: Inventory) -> dict[str, object]:
    fp = inv.fp_all()
    names = [corr_csv_name(k, s) for k in CORR_KINDS for s in CORR_STATS]
    names += [f"{corr_fig_stem(k)}.{ext}" for k in CORR_KINDS for ext in ("png", "pdf")]
    return {n: fp for n in names}


@dataclass
class CorrelationSummary:
    """The 5x5 matrices {(kind, stat): DataFrame} at K = 5, and the figure paths."""

    matrices: dict[tuple[str, str], pd.DataFrame]
    figures: list[Path]
    skipped: bool
    notes: list[str]


def correlations_step(cfg: ExperimentConfig, methods: tuple[str, ...] | list[str] = METHODS, overwrite: bool = False,
                      log: Log = print) -> CorrelationSummary:
    """Pearson and Spearman matrices between methods of mu, sigma and SNR at K = 5, flattened over pairs."""
    inv = take_inventory(cfg, methods, need=2)
    notes = inv.describe()
    for line in notes:
        log(line)
    out = Outputs(cfg.results_dir, CORR_MANIFEST, overwrite)
    expected = _corr_outputs(inv)
    figures = [cfg.results_dir / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in ("png", "pdf")]
    if out.all_finished(expected):
        log(f"correlations of {cfg.name} are up to date: nothing recomputed (--overwrite to redo)")
        return CorrelationSummary(read_correlations(cfg), figures, skipped=True, notes=notes)

    k = cfg.n_ckpts
    per_stat: dict[str, dict[str, np.ndarray]] = {s: {} for s in CORR_STATS}
    ref = None
    for m in tqdm(inv.methods, desc="correlations", leave=False):
        ms = load_method(inv, m)
        if ref is None:
            ref = (m, ms.train_indices, ms.test_indices)
        elif (ms.train_indices, ms.test_indices) != ref[1:]:
            raise TDAError(f"{m} and {ref[0]} scores of {cfg.name} cover different train/test samples: "
                           f"rerun `{inv.fix([m])} --overwrite`")
        st = stats.stats_across_k(ms.scores, k)  # keep only the statistics: scores can be large
        per_stat["mean"][LABELS[m]], per_stat["std"][LABELS[m]], per_stat["snr"][LABELS[m]] = st.mu, st.sigma, st.snr
        del ms
    fp = inv.fp_all()
    n_seeds = max(len(f) for f in inv.files.values())
    mats = {}
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            mats[(kind, s)] = mat = stats.correlation_matrix(per_stat[s], kind)
            out.write(corr_csv_name(kind, s), mat.to_csv(), fp)
        fig = plots.correlation_heatmaps({CORR_STATS[s]: mats[(kind, s)] for s in CORR_STATS},
                                         f"{cfg.name}: {kind.capitalize()} correlation between methods, "
                                         f"K = {k} checkpoints, up to {n_seeds} seeds")
        _figure(out, corr_fig_stem(kind), fig, fp, formats=("png", "pdf"))
    out.save_manifest(methods={m: list(inv.files[m]) for m in inv.methods})
    log(f"wrote {len(out.written)} files to {cfg.results_dir}/ ({len(out.kept)} unchanged)")
    return CorrelationSummary(mats, figures, skipped=False, notes=notes)


def read_correlations(cfg: ExperimentConfig) -> dict[tuple[str, str], pd.DataFrame]:
    """The correlation CSVs written by run_correlations.py (those that exist)."""
    out = {}
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            p = cfg.results_dir / corr_csv_name(kind, s)
            if p.exists():
                out[(kind, s)] = pd.read_csv(p, index_col=0)
    return out


# ---------------------------------------------------------------- printing and report.md
def format_pvalue_summary(s: PValueSummary) -> str:
    """The mean p-value table and significance fractions, as printed at the end of a run."""
    sig = s.significance.set_index(["method", "K"])[
        ["n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05", "t_frac_bh_lt_0.05"]]
    return ("Mean p-value over all train-test pairs (paper's z-test on SNR), rows K checkpoints:\n"
            + s.mean_p.to_string(float_format=lambda v: f"{v:.4f}") + "\n"
            + null_reference(s.significance) + "\n\n"
            + f"Fraction of pairs with p < {ALPHA} (z: paper's test, t: t-test on the mean; bh: "
              "after Benjamini-Hochberg):\n"
            + sig.to_string(float_format=lambda v: f"{v:.4f}") + "\n")


def format_correlations(mats: dict[tuple[str, str], pd.DataFrame]) -> str:
    parts = []
    for (kind, s), m in mats.items():
        parts.append(f"{kind.capitalize()} correlation of {CORR_STATS[s]} between methods (K = 5):\n"
                     + m.to_string(float_format=lambda v: f"{v:+.3f}"))
    return "\n\n".join(parts) + "\n"


_READING = """\
## How to read this

Each of the {n_seeds} seeds is one model drawn from the posterior (a deep ensemble), and each of the
last K epoch checkpoints of a seed is another (SWA-like) sample. For every training sample j and test
sample i, tau(j, i) is averaged over the seed's last K checkpoints, then mu (mean) and sigma (sample
standard deviation) are taken over the seeds and SNR = mu / sigma.

* **p-value (paper's z-test)**: p = 2 (1 - Phi(|SNR|)). Small p means the attribution of j to i has the
  same sign and size across posterior samples: it is signal, not the noise of initialisation and batch
  order. Large p (near 1) means it is drowned in that noise. This statistic has no sqrt(n): it asks
  whether the attribution of *one* model from the posterior is distinguishable from zero, and does not
  shrink with more seeds.
* **t-test**: t = mu / (sigma / sqrt(n)) with n - 1 degrees of freedom, the usual test that the *mean*
  attribution over the n seeds is non-zero (what the reference did not report). It is more powerful as
  n grows: with 10 seeds it finds far more significant pairs than the z-test at the same level.
* **Benjamini-Hochberg**: there are n_train x n_test tests per method and K; the "bh" fractions count
  pairs whose FDR-adjusted p-value is below 0.05, i.e. a false discovery rate of at most 5%.
* **What noise looks like**: if an attribution is pure noise (true mean 0), the t-test's p-values are
  uniform (the dashed line at density 1 in the histograms, mean 0.5). The paper's z-test is not
  calibrated that way: its SNR is the t statistic divided by sqrt(n), so under pure noise its p-values
  pile up near 1 (mean {null_z:.3f} with {n_seeds} seeds). Read the mean p-value table against that
  reference, not against 0.5. In the histograms, mass piled up near 0 is consistent attribution.
* **Zero spread**: a pair with sigma = 0 (all seeds agree exactly) gets SNR = +-inf and p = 0 when
  mu != 0, and SNR = 0, p = 1 when mu = 0 (no attribution at all). Such pairs are counted in
  `significance.csv` (`n_zero_sigma`) and dropped from the SNR correlations.
* **Signs**: LOO, GD and GC > 0, but ATS and IF < 0, mean "j helps i" (ATS and IF measure the change of
  the test loss, which falls when j helps). So a correlation between a method of the first group and
  one of the second is **negative** when the two methods agree; within a group it is positive.
"""


_REDUNDANT = {"method", "model", "n_train", "n_test", "note"}


def _short(v, width: int = 60) -> str:
    text = str(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _settings_lines(info: dict) -> list[str]:
    lines = []
    for m, d in info.items():
        settings = ", ".join(f"{k}={_short(v)}" for k, v in sorted(d.get("settings", {}).items())
                             if k not in _REDUNDANT)
        lines.append(f"* {LABELS[m]}: seeds {', '.join(map(str, d['seeds']))}"
                     + (f"; settings: {settings}" if settings else ""))
    return lines


def _if_note(info: dict, mats: dict) -> str:
    solver = str(info.get("if", {}).get("settings", {}).get("solver", "lissa")).lower()
    if "if" not in info or solver != "lissa":
        return ""
    note = ("\n**IF with the reference LiSSA settings is nearly a scaled Grad-Dot.** The recursion runs one "
            "pass of ceil(N/8) steps with scale 1e4 and damping 5e-3, so H_t h / scale is tiny and "
            "s_test is close to a multiple of the test gradient: IF ~ -c * GD with c > 0. It inherits "
            "GD's statistics rather than those of an inverse-Hessian influence.")
    m = mats.get(("pearson", "mean"))
    if m is not None and "IF" in m.index and "GD" in m.columns:
        note += f" Measured here: Pearson correlation of the mean between IF and GD = {m.loc['IF', 'GD']:+.3f}."
    return note + "\n"


def _loo_note(info: dict, epochs: int) -> str:
    loo = info.get("loo")
    if loo is None:
        return ""
    protocol = str(loo.get("settings", {}).get("protocol", "?"))
    share = loo.get("shared_share")
    note = f"\n**LOO protocol: `{protocol}`.**"
    if share is not None:
        note += (f" Of the variance of LOO's tau over all pairs (K = {len(loo['ckpt_epochs'])}), "
                 f"{100 * share:.0f}% is the part every training sample j shares for a test sample (the "
                 "per-seed mean over j).")
    if protocol == "paper":
        note += (" Under the paper protocol tau = L_i(retrained without j) - L_i(checkpoint) also contains the "
                 f"effect of training {epochs} more epochs, the same for every j and consistent across seeds, so "
                 "LOO's small p-values here are largely that continuation effect, not the removal of j "
                 "(DESIGN 5). `python run_loo.py --protocol paired` or `scratch` (with --overwrite) "
                 "measures the removal alone.")
    return note + "\n"


def build_report(cfg: ExperimentConfig) -> str:
    """report.md of an experiment from the files in results/<experiment>/ (figures embedded)."""
    d = cfg.results_dir
    mean_p, sig = read_pvalue_tables(cfg)
    info = _read_manifest(d / PVALUES_MANIFEST).get("info", {})
    info = {m: info[m] for m in METHODS if m in info}  # JSON sorted the keys: back to the paper's order
    mats = read_correlations(cfg)
    n_seeds = max((len(v["seeds"]) for v in info.values()), default=len(load_seeds(cfg.root)))
    absent = [LABELS[m] for m in METHODS if m not in info]
    parts = [f"# Bayesian TDA results: {cfg.name}\n",
             f"Model `{cfg.model}`, task `{cfg.task}`, {cfg.n_train} training samples "
             f"({cfg.num_per_class} per class), checkpoints after epochs "
             f"{', '.join(map(str, cfg.ckpt_epochs))}. Regenerate with "
             f"`bash run_experiment.sh {cfg.name}`.\n\n",
             "Methods and seeds used:\n\n", "\n".join(_settings_lines(info)) + "\n"]
    if absent:
        parts.append(f"\nNot included (no scores with >= 2 seeds): {', '.join(absent)}.\n")
    parts.append("\n" + _READING.format(n_seeds=n_seeds, null_z=stats.null_mean_z_pvalue(max(n_seeds, 2))))
    parts.append(_if_note(info, mats))
    parts.append(_loo_note(info, cfg.epochs))
    parts.append("\n## Mean p-value (the paper's table)\n\nMean over all train-test pairs of the z-test "
                 "p-value, rows = number K of last checkpoints averaged per seed. "
                 "(`mean_p_values.csv`; per-pair values in `pvalues_<method>_across_<K>_ckpts.csv`, "
                 "rows = train dataset indices, columns = test dataset indices.)\n\n")
    parts.append(mean_p_markdown(mean_p, sig))
    cols = ["method", "K", "n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05",
            "t_frac_bh_lt_0.05"]
    parts.append(f"\n## Fraction of pairs with p < {ALPHA}\n\nz = paper's test, t = t-test on the mean, "
                 "bh = after Benjamini-Hochberg (`significance.csv`).\n\n")
    parts.append(markdown_table(sig[cols].set_index("method")))
    parts.append("\n## p-value histograms\n\n")
    for m in info:
        parts.append(f"![{LABELS[m]} p-values]({hist_name(m)})\n\n")
    if mats:
        parts.append("## Correlations between methods (K = 5)\n\nEach cell correlates two methods' "
                     "mu, sigma or SNR over all train-test pairs. Remember the signs: agreement between "
                     "{LOO, GD, GC} and {ATS, IF} shows as a negative correlation.\n\n")
        for kind in CORR_KINDS:
            if any(kk == kind for kk, _ in mats):
                parts.append(f"![{kind} correlations]({corr_fig_stem(kind)}.png)\n\n"
                             f"({corr_fig_stem(kind)}.pdf; CSV: `{corr_csv_name(kind, '<mean|std|snr>')}`)\n\n")
    else:
        parts.append(f"Correlations: not computed yet (run `python run_correlations.py --experiment {cfg.name}`).\n")
    return "".join(parts)


def write_report(cfg: ExperimentConfig) -> Path:
    """(Re)write results/<experiment>/report.md where its content changed."""
    path = cfg.results_dir / "report.md"
    text = build_report(cfg)
    if not path.exists() or path.read_text() != text:
        io.atomic_write_with(path, _write_bytes(text.encode()))
    return path


def figure_paths(cfg: ExperimentConfig) -> list[Path]:
    """The figures that exist in results/<experiment>/, histograms first."""
    d = cfg.results_dir
    used = _read_manifest(d / PVALUES_MANIFEST).get("info", {})
    hists = [d / hist_name(m) for m in METHODS if m in used and (d / hist_name(m)).exists()]
    corr = [d / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in ("png", "pdf")
            if (d / f"{corr_fig_stem(k)}.{e}").exists()]
    return hists + corr


def add_methods_arg(p: argparse.ArgumentParser) -> None:
    """--methods and --overwrite of run_pvalues.py / run_correlations.py."""
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="TDA methods to include (default: all five)")
    p.add_argument("--overwrite", action="store_true", help="recompute outputs that are up to date")


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
