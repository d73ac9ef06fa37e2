"""results/study/report.md: each finding with its number, its figure and the command that reproduces it."""
from __future__ import annotations

import pandas as pd

from ..results.outputs import markdown_table
from .plan import ARMS, MAIN_LABELS, StudyPlan, output_of
from .workspace import Failure

PAPER, PAIRED, SCRATCH = ARMS["loo_paper"][3], ARMS["loo_paired"][3], MAIN_LABELS["loo"]


def _pct(v: float) -> str:
    return "nan" if pd.isna(v) else f"{100 * v:.0f}%"


def _default_cmd(plan: StudyPlan) -> str:
    return "python run_study.py" + (" --quick" if plan.quick else "")


def command(plan: StudyPlan) -> str:
    """The command that reproduces this study."""
    return plan.command or _default_cmd(plan)


def _env(plan: StudyPlan, root) -> str:
    return f"TDA_ROOT={root}"


def header(plan: StudyPlan, timings: pd.DataFrame, total_s: float) -> str:
    """What was run, on which grid, and how long it took."""
    seeds = f"{plan.n_seeds} seeds (the first of random_seeds.pt)"
    return (f"# The noise of training data attribution: what it is made of, and which conclusions survive a "
            f"clean ground truth\n\nReproduce everything with `{command(plan)}`"
            + ((" (`make study`" + (" with ARGS=--quick" if plan.quick else "") + ")")
               if command(plan) == _default_cmd(plan) else "") + f"; it works under `{plan.root}/` and writes here. "
            f"Grid: tasks {', '.join(plan.tasks)}; protocols compared at {', '.join(map(str, plan.protocol_ns))} "
            f"per class, noise decomposed at {', '.join(map(str, plan.decomposition_ns))} per class, LDS at "
            f"{', '.join(map(str, plan.lds_ns)) or 'none'} per class on {plan.lds_subsets} subsets; {seeds}; "
            f"{plan.test_size} test samples per task (`{plan.root}/data/<task>/test_subset.txt`); model "
            f"`{plan.model}`; K = 5 checkpoints averaged per seed throughout. Wall time: {total_s / 60:.1f} min, of "
            f"which the {len(timings)} steps {timings['seconds'].sum() / 60:.1f} min (`timings.csv`; a step whose "
            "outputs were already current costs next to nothing).\n")


def failures_section(failures: list[Failure], analysis_command: str) -> str:
    """What failed, each with its one-line error and the command that reruns it alone; empty when nothing did."""
    if not failures:
        return ""
    items = "".join(f"* **{f.what}**: {f.error}  \n  rerun: `{f.command}`\n" for f in failures)
    return (f"\n## What failed\n\n{len(failures)} part(s) of the study failed; the sections below are written from "
            "everything else. Once the cause is fixed, run each command below (or the whole study again: finished "
            f"steps are skipped), then `{analysis_command}` rewrites this report.\n\n" + items)


def decomposition_section(plan: StudyPlan, d: pd.DataFrame) -> str:
    """Finding 1: the shares of tau's seed variance due to initialisation, batch order and their interaction."""
    if d.empty:
        return "\n## 1. What the noise is made of\n\nNot computed (no decomposition setting has all three ensembles).\n"
    t = d.assign(setting=d["task"] + " " + d["n"].astype(str) + "pc")
    show = pd.DataFrame({
        "V_both": t["V_both"].map("{:.3g}".format),
        "init (90% CI)": [f"{_pct(a)} [{_pct(lo)}, {_pct(hi)}]" for a, lo, hi in
                          zip(t["share_init"], t["share_init_lo"], t["share_init_hi"])],
        "batch order (90% CI)": [f"{_pct(a)} [{_pct(lo)}, {_pct(hi)}]" for a, lo, hi in
                                 zip(t["share_batch"], t["share_batch_lo"], t["share_batch_hi"])],
        "interaction": t["share_interaction"].map(_pct),
        "V_init/V_both": t["ratio_init"].map("{:.2f}".format), "V_batch/V_both": t["ratio_batch"].map("{:.2f}".format)},
    )
    show.index = t["setting"] + " / " + t["method"]
    show.index.name = "setting / method"
    mean = d.groupby(["n", "method"], sort=False)[["share_init", "share_batch", "share_interaction"]].mean()
    lines = [f"{m} {_pct(r.share_init)} / {_pct(r.share_batch)} / {_pct(r.share_interaction)}"
             for (n, m), r in mean.iterrows()]
    lines = [f"initialisation / batch order / interaction at {', '.join(map(str, sorted(set(d['n']))))} per class, "
             f"averaged over {', '.join(dict.fromkeys(d['task']))}: " + ", ".join(lines)]
    e = plan.experiment(plan.tasks[0], plan.decomposition_ns[0], "init")
    return ("\n## 1. What the noise is made of\n\n"
            "Three ensembles of the same seeds: the paper's (seed k sets initialisation and batch order), `_init` "
            "(seed k sets the initialisation; every seed uses the first seed's batch order) and `_batch` (the "
            "reverse). With tau = m + A(init) + B(order) + AB: V_both = s_A + s_B + s_AB, V_init = s_A + s_AB, "
            "V_batch = s_B + s_AB; shares are s_A, s_B and s_AB over V_both, pooled over all pairs, with 90% "
            "bootstrap intervals over seeds (a negative share is sampling error around a small one). "
            f"**Headline:** {'; '.join(lines)}.\n\n" + markdown_table(show) +
            "\n![decomposition](decomposition.png)\n\n(`decomposition.csv`. Reproduce one ensemble: "
            f"`{_env(plan, plan.root)} python run_cnn_training.py --experiment {e} --seed_id all`, then the "
            "method scripts with the same experiment.)\n")


def bitwise_section(plan: StudyPlan, b: pd.DataFrame) -> str:
    """Finding 2: at one batch per epoch, the `_batch` ensemble has no noise at all."""
    if b.empty:
        return ""
    rows = [f"`{r.experiment}`: {r.identical_to_first} of {r.seeds - 1} seeds bitwise identical to the first "
            f"(largest difference {r.max_abs_diff:.3g})" for r in b.itertuples()]
    return ("\n## 2. Batch-order noise is exactly zero when an epoch is one batch\n\nWhere all N training samples "
            "fit in one batch of 32 (10 per class of a 3-class task), every epoch is one batch of all samples, and "
            "the variants visit a batch's samples in index order, so the seeds of `_batch` must train identically; "
            "where an epoch has several batches they must not: " + "; ".join(rows) +
            ". (`bitwise.csv`; the tests check the same on a tiny setting.)\n")


def variants_section(v: pd.DataFrame) -> str:
    """Finding 3: how the mean p-value and the significant fraction change when one source of noise is removed."""
    if v.empty or v["source"].nunique() < 2:
        return ""
    dec = v[v.groupby(["task", "n"])["source"].transform("nunique") == 3]
    parts = ["\n## 3. Removing one source of noise: mean p-value and significant pairs\n\n"
             "Mean z-test p-value at K = 5 (rows: setting / method, columns: which source varies with the seed); "
             "then the fraction of pairs with BH-adjusted t-test q < 0.05 (`variants.csv`, all fractions there).\n\n"]
    for col in ("z_mean_p", "t_frac_bh_lt_0.05"):
        p = dec.pivot_table(index=["task", "n", "method"], columns="source", values=col, sort=False)
        p = p[[c for c in ("both", "init", "batch") if c in p.columns]]
        p.index = [f"{t} {n}pc / {m}" for t, n, m in p.index]
        p.index.name = col
        parts.append(markdown_table(p, "{:.3f}") + "\n")
    parts.append("![variants](variants.png)\n")
    return "".join(parts)


def protocols_section(plan: StudyPlan, p: pd.DataFrame, agree: pd.DataFrame, cg: pd.DataFrame) -> str:
    """Findings 4 and 5: LOO under paper / paired / scratch, and IF by LiSSA against CG on the Gauss-Newton matrix."""
    if p.empty:
        return ""
    parts = ["\n## 4. The ground truth: LOO `paper` against `paired` and `scratch`\n\n"]
    for (task, n), g in p.groupby(["task", "n"], sort=False):
        g = g.set_index("arm")
        if PAPER in g.index:
            base = g.loc[PAPER]
            moves = [f"under `{a.split('(')[1].rstrip(')')}` {g.loc[a, 'z_mean_p']:.3f} and "
                     f"{_pct(g.loc[a, 'z_frac_p_lt_0.05'])} (BH t-test: {_pct(g.loc[a, 't_frac_bh_lt_0.05'])})"
                     for a in (PAIRED, SCRATCH) if a in g.index]
            parts.append(f"**{task} {n}pc:** the paper-protocol LOO has mean p {base.z_mean_p:.3f} and "
                         f"{_pct(base['z_frac_p_lt_0.05'])} of pairs with z-test p < 0.05 (BH t-test: "
                         f"{_pct(base['t_frac_bh_lt_0.05'])}); " + "; ".join(moves) + ". Share of LOO's variance "
                         "common to all j of a test sample: " + ", ".join(
                             f"{a} {_pct(g.loc[a, 'shared_share'])}" for a in g.index if output_of(a) == "loo") + ".\n\n")
    cols = ["task", "n", "arm", "n_seeds", "z_mean_p", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_mean_p",
            "t_frac_p_lt_0.05", "t_frac_bh_lt_0.05"]
    parts.append(markdown_table(p[cols].set_index("task"), "{:.3f}") + "\n![protocols](protocols.png)\n\n"
                 f"(`protocols.csv`. Reproduce an arm: `{_env(plan, plan.arm_root('loo_paired'))} python run_loo.py "
                 f"--experiment {plan.experiment(plan.tasks[0], plan.protocol_ns[0])} --seed_id all --protocol "
                 "paired`; the arm's data/ and models/ link to the study root's.)\n")
    parts.append("\n## 5. IF: the paper's LiSSA against a converged solver\n\n")
    if not agree.empty:
        a = agree[(agree["method"].map(output_of) == "if") & (agree["reference"] == SCRATCH)]
        for r in a.itertuples():
            parts.append(f"* {r.task} {r.n}pc, {r.method} vs LOO (scratch), {r.n_seeds} seeds: Pearson r of mu "
                         f"{r.pearson_mu:+.3f}, Spearman {r.spearman_mu:+.3f}; of the per-pair p-values Pearson "
                         f"{r.pearson_p:+.3f}, Spearman {r.spearman_p:+.3f}.\n")
    if not cg.empty:
        per = "; ".join(f"{t} {n}pc: {len(g)} seeds, at most {int(g['max_iterations'].max())} iterations, true "
                        f"relative residual at most {g['max_rel_residual'].max():.2g}, converged on "
                        f"{int(g['converged'].fillna(False).astype(bool).sum())}"
                        for (t, n), g in cg.groupby(["task", "n"], sort=False))
        parts.append(f"\nCG on G + lambda I (Gauss-Newton, lambda = {cg['damping'].iloc[0]}, tol {cg['tol'].iloc[0]}, "
                     f"float32): {per}; {int(cg['negative_curvature'].sum())} right-hand sides met negative curvature "
                     "(`cg.csv`). CG stops when its recursively updated residual reaches tol; the residual stated is "
                     "||b - (G + lambda I) x|| / ||b|| recomputed afterwards, which float32 rounding can leave somewhat "
                     "above tol (a seed counts as converged only when it is below). Reproduce: "
                     f"`{_env(plan, plan.arm_root('if_cg_gn'))} python run_if.py --experiment "
                     f"{plan.experiment(plan.tasks[0], plan.protocol_ns[0])} --seed_id all --solver cg --hessian "
                     "gauss-newton`.\n")
    return "".join(parts)


def agreement_section(agree: pd.DataFrame) -> str:
    """Every method against every LOO protocol."""
    if agree.empty:
        return ""
    t = agree.assign(row=agree["task"] + " " + agree["n"].astype(str) + "pc / " + agree["method"])
    show = t.pivot_table(index="row", columns="reference", values="aligned_pearson_mu", sort=False)
    show.index.name = "setting / method"
    return ("\n## 6. Which method agrees with which ground truth\n\nSign-aligned Pearson r of mu (positive = agrees; "
            "`agreement.csv` also holds Spearman, and both correlations of the per-pair p-values).\n\n"
            + markdown_table(show, "{:+.3f}") + "\n![agreement](agreement.png)\n")


def footer(plan: StudyPlan, costs: list[tuple[str, float]], n_tasks: int, grid: str, missing: list[str]) -> str:
    """The summary across experiments, the cost of a larger grid and what is left out."""
    parts = ["\n## 9. Across experiments\n\nThe paper's comparison over all of the study's experiments: "
             "[summary/report.md](summary/report.md).\n\n![mean p against K](summary/mean_p_vs_k.png)\n"]
    if costs:
        total = n_tasks * sum(s for _, s in costs)
        parts.append(f"\n## Cost of the full grid\n\nEstimated CPU time of {grid}, from per-seed costs measured on a "
                     f"shared 2-core machine: about {total / 3600:.1f} CPU-hours ({total / 7200:.1f} h on 2 cores). "
                     "Per task:\n\n" + "".join(f"* {w}: {s / 60:.0f} CPU-min\n" for w, s in costs))
    if missing:
        grouped: dict[str, list[str]] = {}
        for m in missing:
            where, label = m.rsplit(": ", 1)
            grouped.setdefault(where, []).append(label)
        parts.append("\nNot available when this report was written (run the study again to compute them): "
                     + "; ".join(f"{w} ({', '.join(ls)})" for w, ls in grouped.items()) + ".\n")
    return "".join(parts)
