"""Every method's LDS on an experiment: its seeds' LDS outcomes and attribution scores (ours and external ones) loaded
as arrays, the table of every LDS variant (`tda.lds.score.lds_variants`) with bootstrap intervals over test samples, and
results/<experiment>/lds.csv, lds_per_test.csv and lds.png (`evaluate`, what `run_lds.py` writes).

Loading is the I/O here; `lds_table` is pure. Scores and outcomes are matched by seed and by checkpoint epoch (a
score set with fewer checkpoints than the experiment is taken as its last ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import io, provenance
from .. import plots  # noqa: F401 - the headless backend before pyplot
from ..config import ExperimentConfig, TDAError
from ..methods import label, outputs
from ..results.outputs import Outputs, write_figure
from ..seeds import load_seeds
from .report import VARIANT_NAMES, format_table
from .run import MASKS_FILE, lds_dir, load_masks, outcome_path
from .score import OUTCOMES, bootstrap_mean, lds_variants, observed_help

import matplotlib.pyplot as plt  # noqa: E402,I001 - after tda.plots chose the headless backend

#: bootstrap draws over test samples and the interval's level
REPS, LEVEL = 1000, 0.9
LDS_MANIFEST = ".lds_manifest.json"
FILES = ("lds.csv", "lds_per_test.csv", "lds.png")


@dataclass
class GroundTruth:
    """The LDS outcomes of an experiment's seeds: masks [S, N], loss and margin [R, C, S, M] (R seeds)."""

    seeds: list[int]
    masks: np.ndarray
    loss: np.ndarray
    margin: np.ndarray
    train_indices: list[int]
    test_indices: list[int]
    ckpt_epochs: list[int]
    settings: dict
    files: list[Path] = field(default_factory=list)

    def observed(self, outcome: str) -> np.ndarray:
        """The observed help [R, C, S, M] of one outcome (minus the loss, or the margin)."""
        return observed_help(getattr(self, outcome), outcome)


def load_truth(cfg: ExperimentConfig) -> GroundTruth:
    """Every seed's outcomes drawn on the experiment's current subsets (others are left out, with a note)."""
    if not (lds_dir(cfg) / MASKS_FILE).exists():
        raise TDAError(f"no LDS ground truth for {cfg.name}: run `python run_lds.py --experiment {cfg.name} "
                       "--seed_id all` first")
    m = load_masks(cfg)
    digest, files, rows, ref = provenance.digest(m["masks"]), [], [], None
    for s in load_seeds(cfg.root):
        path = outcome_path(cfg, s)
        if not path.exists():
            continue
        d = io.load_tensor_file(path, "LDS outcomes", f"rerun `python run_lds.py --experiment {cfg.name} "
                                "--seed_id all --overwrite`")
        if (d.get("provenance") or {}).get("settings", {}).get("masks") != digest:
            print(f"note: LDS outcomes of seed {s} were drawn on other subsets: left out (rerun run_lds.py)")
            continue
        meta = ([int(i) for i in d["train_indices"]], [int(i) for i in d["test_indices"]],
                [int(e) for e in d["ckpt_epochs"]])
        if ref is not None and meta != ref:
            raise TDAError(f"LDS outcomes of seed {s} cover other samples or checkpoints than the first seed's: rerun "
                           f"`python run_lds.py --experiment {cfg.name} --seed_id all --overwrite`")
        ref = meta
        rows.append((s, d["loss"].double().numpy(), d["margin"].double().numpy(), d.get("settings", {})))
        files.append(path)
    if not rows:
        raise TDAError(f"no LDS outcomes for {cfg.name} in {lds_dir(cfg)}/: run `python run_lds.py --experiment "
                       f"{cfg.name} --seed_id all`")
    settings = {k: rows[0][3].get(k) for k in ("subsets", "alpha", "subset_seed", "subset_size")}
    return GroundTruth([r[0] for r in rows], m["masks"].numpy().astype(bool), np.stack([r[1] for r in rows]),
                       np.stack([r[2] for r in rows]), *ref, settings, files + [lds_dir(cfg) / MASKS_FILE])


@dataclass
class Attributions:
    """One method's scores on the seeds it shares with the ground truth: tau [R, C, N, M] and its sign convention."""

    name: str
    sign: int
    seeds: list[int]
    scores: np.ndarray
    files: list = field(default_factory=list)


def our_methods(cfg: ExperimentConfig, truth: GroundTruth, which: list[str] | None = None) -> list[Attributions]:
    """Every registered output with scores on at least one of the ground truth's seeds."""
    out = []
    for o, m in outputs().items():
        if which is not None and o not in which:
            continue
        seeds = [s for s in truth.seeds if cfg.scores_path(o, s).exists()]
        if not seeds:
            continue
        arrays = []
        for s in seeds:
            d = io.load_scores(cfg, o, s)
            idx = ([int(i) for i in d["train_indices"]], [int(i) for i in d["test_indices"]])
            if idx != (truth.train_indices, truth.test_indices):
                raise TDAError(f"{label(o)} scores of seed {s} cover other samples than the LDS outcomes: recompute "
                               f"them (`{m.command(cfg.name)}`) or the LDS (`python run_lds.py --experiment "
                               f"{cfg.name} --seed_id all --overwrite`)")
            arrays.append(d["scores"].double().numpy())
        out.append(Attributions(label(o), m.sign, seeds, np.stack(arrays), [cfg.scores_path(o, s) for s in seeds]))
    return out


def external_method(cfg: ExperimentConfig, truth: GroundTruth, path: str, name: str, sign: int) -> Attributions:
    """Scores computed anywhere ([seeds, checkpoints, N, M] file or per-seed directory, docs/own_data.md): their
    seeds are the files' names where those are seeds of the experiment, else random_seeds.pt's in order."""
    from ..results.external_scores import load_external
    ext = load_external(path, name)
    ms, fp = ext.ms, ext.fingerprint()
    all_seeds = load_seeds(cfg.root)
    seeds = ms.seeds if all(s in all_seeds for s in ms.seeds) else all_seeds[:len(ms.seeds)]
    if len(ms.seeds) > len(all_seeds):
        raise TDAError(f"{path}: {len(ms.seeds)} seeds, but {cfg.name} has {len(all_seeds)}")
    n, m = len(truth.train_indices), len(truth.test_indices)
    for got, want, default, what in ((ms.train_indices, truth.train_indices, list(range(n)), "training"),
                                     (ms.test_indices, truth.test_indices, list(range(m)), "test")):
        if got != want and got != default[:len(got)] or len(got) != len(want):
            raise TDAError(f"{path}: its {len(got)} {what} samples are not the {len(want)} of {cfg.name}'s LDS "
                           "outcomes (same samples, same order)")
    keep = [k for k, s in enumerate(seeds) if s in truth.seeds]
    if not keep:
        raise TDAError(f"{path}: none of its seeds ({', '.join(map(str, seeds))}) has LDS outcomes: run "
                       f"`python run_lds.py --experiment {cfg.name} --seed_id all`")
    if ms.scores.shape[1] > len(truth.ckpt_epochs):
        raise TDAError(f"{path}: {ms.scores.shape[1]} checkpoints per seed, {cfg.name} has {len(truth.ckpt_epochs)}")
    scores = ms.source.read(keep, slice(None), slice(None))  # [len(keep), C, N, M] in memory: the LDS needs every pair
    return Attributions(name, sign, [seeds[k] for k in keep], np.asarray(scores, dtype=np.float64), fp)


def lds_rows(truth: GroundTruth, a: Attributions, reps: int = REPS) -> tuple[list[dict], list[dict]]:
    """The LDS table's rows of one method (every outcome and variant), and its per-test-sample LDS."""
    rows = [truth.seeds.index(s) for s in a.seeds]
    c = a.scores.shape[1]  # the last c checkpoints of the outcomes
    rows_out, per_test = [], []
    for outcome in OUTCOMES:
        obs = truth.observed(outcome)[rows][:, -c:]
        for v in lds_variants(a.scores, obs, truth.masks, a.sign, c):
            mean, lo, hi = bootstrap_mean(v.per_test, reps, LEVEL)
            rows_out.append({"method": a.name, "sign": a.sign, "outcome": outcome, "scores": v.scores,
                             "target": v.target, "K": v.k, "n_seeds": len(a.seeds), "n_subsets": len(truth.masks),
                             "lds": mean, "lds_lo": lo, "lds_hi": hi,
                             "seed_sd": float(np.nanstd(v.per_seed, ddof=1)) if v.per_seed is not None
                             and np.isfinite(v.per_seed).sum() > 1 else float("nan"),
                             "n_test": int(np.isfinite(v.per_test).sum())})
            per_test += [{"method": a.name, "outcome": outcome, "scores": v.scores, "target": v.target,
                          "test_index": i, "lds": x} for i, x in zip(truth.test_indices, v.per_test)]
    return rows_out, per_test


def lds_table(truth: GroundTruth, methods: list[Attributions], reps: int = REPS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the LDS table: one row per method, outcome, scores variant and target; the per-test-sample LDS)."""
    table, per_test = [], []
    for a in methods:
        t, p = lds_rows(truth, a, reps)
        table += t
        per_test += p
    return pd.DataFrame(table), pd.DataFrame(per_test)


def evaluate(cfg: ExperimentConfig, external: list[tuple[str, str, int]] = (), overwrite: bool = False,
             methods: list[str] | None = None, reps: int = REPS, log: Callable[[str], None] = print,
             need_scores: bool = True) -> Path | None:
    """Write the LDS of every method with scores (and of each external (path, name, sign)) into
    results/<experiment>/; returns lds.csv. Finished files are kept unless their inputs changed. Without any
    scores: a one-line error, or with `need_scores` False a note and None."""
    truth = load_truth(cfg)
    found: list[Attributions] = our_methods(cfg, truth, methods)
    found += [external_method(cfg, truth, p, n, s) for p, n, s in external]
    if not found:
        why = (f"no attribution scores of {cfg.name} on the seeds with LDS outcomes ({', '.join(map(str, truth.seeds))})"
               f": run the methods first (e.g. `python run_gd_and_gc.py --experiment {cfg.name} --seed_id all`)")
        if need_scores:
            raise TDAError(why)
        log(f"no LDS table yet: {why}, then `python run_lds.py --experiment {cfg.name} --evaluate`")
        return None
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise TDAError(f"two score sets are named alike ({', '.join(names)}): give --method_name another name")
    fp = {"truth": [provenance.file_digest(f) for f in truth.files], "reps": reps,
          "methods": {a.name: [a.sign, a.seeds, [provenance.file_digest(f) if isinstance(f, Path) else f
                                                 for f in a.files]] for a in found}}
    out = Outputs(cfg.results_dir, LDS_MANIFEST, overwrite)
    if out.all_finished({n: fp for n in FILES}):
        log(f"LDS of {cfg.name} in {cfg.results_dir}/lds.csv is up to date (--overwrite to redo)")
        return cfg.results_dir / "lds.csv"
    table, per_test = lds_table(truth, found, reps)
    out.write("lds.csv", table.to_csv(index=False, float_format="%.6g"), fp)
    out.write("lds_per_test.csv", per_test.to_csv(index=False, float_format="%.6g"), fp)
    write_figure(out, "lds", lds_figure(table, f"LDS on {cfg.name}: {len(truth.masks)} subsets of "
                                               f"{truth.settings.get('subset_size')} samples, {len(truth.seeds)} seeds"), fp)
    log(format_table(table))
    return cfg.results_dir / "lds.csv"


def lds_figure(table: pd.DataFrame, title: str, row: str | None = None) -> Figure:
    """LDS against the posterior target: one panel per outcome (and per `row` value), bars per method and score
    variant, with their 90% intervals over test samples."""
    t = table[table["target"] == "posterior"]
    rows = list(dict.fromkeys(t[row])) if row else [None]
    outcomes = list(dict.fromkeys(t["outcome"]))
    fig, axes = plt.subplots(len(rows), len(outcomes), figsize=(5.5 * len(outcomes), 3.4 * len(rows)),
                             squeeze=False, sharey=True)
    variants = [v for v in VARIANT_NAMES if v in set(t["scores"])]
    for r, rv in enumerate(rows):
        for c, outcome in enumerate(outcomes):
            ax, sub = axes[r][c], t[(t["outcome"] == outcome) & ((t[row] == rv) if row else True)]
            methods = list(dict.fromkeys(sub["method"]))
            for v_i, v in enumerate(variants):
                g = sub[sub["scores"] == v].set_index("method").reindex(methods)
                x = np.arange(len(methods)) + (v_i - (len(variants) - 1) / 2) * 0.8 / len(variants)
                err = np.abs(np.stack([g["lds"] - g["lds_lo"], g["lds_hi"] - g["lds"]]))
                ax.bar(x, g["lds"], width=0.8 / len(variants), yerr=err, capsize=2, label=VARIANT_NAMES[v],
                       color=f"C{v_i}")
            ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(f"{rv} | {outcome}" if row else outcome)
            ax.set_ylabel("LDS (Spearman)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
