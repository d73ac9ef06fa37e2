"""The study's tables from the score files of its root and arms: noise decomposition, variants, protocols, agreement.

Loading is the only I/O here (through the results step's inventory); the maths are `decompose` and
`compare`. Every table is a DataFrame with one row per setting (task, n) and method or arm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io, stats
from ..config import TDAError, parse_experiment
from ..results.inventory import MethodScores, take_inventory
from .compare import agreement, on_seeds, shared_seeds, significance
from .decompose import COMPONENTS, bootstrap_shares, decompose
from .plan import ARMS, MAIN_LABELS, ON_ARM_SEEDS, StudyPlan, on_arm_seeds_label, output_of, sign_of

K_DEFAULT = 5


@dataclass
class Loaded:
    """Every score set of the study, by (task, n) and source or arm, and the score files they came from."""

    main: dict[tuple[str, int, str], dict[str, MethodScores]] = field(default_factory=dict)
    arms: dict[tuple[str, int], dict[str, MethodScores]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_output(root: Path, experiment: str, output: str, label: str, loaded: Loaded) -> MethodScores | None:
    """One output's scores of all seeds under `root`, labelled; None (noted in `loaded.missing`) when absent."""
    cfg = parse_experiment(experiment, root)
    try:
        inv = take_inventory(cfg, [output])
    except TDAError:
        loaded.missing.append(f"{experiment} under {root}: {label}")
        return None
    loaded.files += list(inv.files[output].values())
    ms = inv.load(output)
    ms.label = label
    return ms


def load_all(plan: StudyPlan) -> Loaded:
    """Load the main root's five outputs for every ensemble and each arm's output for the protocol settings."""
    out = Loaded()
    for task in plan.tasks:
        for n in plan.ns:
            for source in plan.sources(n):
                e = plan.experiment(task, n, source)
                got = {lab: load_output(plan.root, e, o, lab, out) for o, lab in MAIN_LABELS.items()}
                out.main[(task, n, source)] = {k: v for k, v in got.items() if v is not None}
            if n in plan.protocol_ns:
                e = plan.experiment(task, n)
                got = {ARMS[a][3]: load_output(plan.arm_root(a), e, ARMS[a][2], ARMS[a][3], out) for a in plan.arms}
                out.arms[(task, n)] = {k: v for k, v in got.items() if v is not None}
    return out


def with_arm_seeds(methods: dict[str, MethodScores]) -> dict[str, MethodScores]:
    """Add each main output restricted to the seeds of an arm that scored fewer (LiSSA on CG's seeds): the two
    compared on equal footing. The labels come from the plan, which knows their signs."""
    for output, arm in ON_ARM_SEEDS:
        main, fewer = methods.get(MAIN_LABELS[output]), methods.get(ARMS[arm][3])
        if main is not None and fewer is not None and len(fewer.seeds) < len(main.seeds):
            label = on_arm_seeds_label(output, arm)
            restricted = on_seeds(main, shared_seeds([fewer, main]))
            restricted.label = label
            methods = {**methods, label: restricted}
    return methods


def _per_seed(ms: MethodScores, k: int) -> np.ndarray:
    return stats.average_last_k(ms.scores, min(k, ms.scores.shape[1]))


def decomposition_table(plan: StudyPlan, loaded: Loaded, k: int = K_DEFAULT, reps: int = 200) -> pd.DataFrame:
    """Per decomposition setting and method: V_both, V_init, V_batch, the shares and their bootstrap intervals."""
    rows = []
    for task in plan.tasks:
        for n in plan.decomposition_ns:
            ens = {s: loaded.main.get((task, n, s), {}) for s in ("both", "init", "batch")}
            for label in MAIN_LABELS.values():
                if not all(label in e for e in ens.values()):
                    continue
                per_seed = {s: _per_seed(e[label], k) for s, e in ens.items()}
                d, ci = decompose(per_seed), bootstrap_shares(per_seed, reps)
                row = {"task": task, "n": n, "method": label, "n_seeds": len(ens["both"][label].seeds),
                       "V_both": d.v_both, "V_init": d.v_init, "V_batch": d.v_batch,
                       "ratio_init": d.ratios["init"], "ratio_batch": d.ratios["batch"]}
                for c in COMPONENTS:
                    row[f"share_{c}"] = d.shares[c]
                    row[f"share_{c}_lo"], row[f"share_{c}_hi"] = ci[c]
                rows.append(row)
    return pd.DataFrame(rows)


def variants_table(plan: StudyPlan, loaded: Loaded, k: int = K_DEFAULT) -> pd.DataFrame:
    """Per setting, ensemble (both / init / batch) and method: mean p-values and significant fractions at K."""
    rows = [{"task": t, "n": n, "source": s, "method": lab, **significance(ms, k)}
            for (t, n, s), methods in loaded.main.items() for lab, ms in methods.items()]
    return pd.DataFrame(rows)


def protocols_table(plan: StudyPlan, loaded: Loaded, k: int = K_DEFAULT) -> pd.DataFrame:
    """Per protocol setting, each ground truth and IF solver: significance at K, and LOO's variance shared by all j."""
    rows = []
    for (task, n), arms in loaded.arms.items():
        main = loaded.main.get((task, n, "both"), {})
        mains = {lab: main[lab] for lab in (MAIN_LABELS["loo"], MAIN_LABELS["if"]) if lab in main}
        for lab, ms in sorted(with_arm_seeds(mains | arms).items(), key=lambda kv: kv[0]):
            row = {"task": task, "n": n, "arm": lab, **significance(ms, k)}
            if output_of(lab) == "loo":
                row["shared_share"] = stats.shared_variance_share(_per_seed(ms, k))
            rows.append(row)
    return pd.DataFrame(rows)


def agreement_table(plan: StudyPlan, loaded: Loaded, k: int = K_DEFAULT) -> pd.DataFrame:
    """Per protocol setting: every method and solver against every LOO protocol (correlations of mu and p)."""
    frames = []
    for (task, n), arms in loaded.arms.items():
        methods = with_arm_seeds({**loaded.main.get((task, n, "both"), {}), **arms})
        refs = {lab: ms for lab, ms in methods.items() if output_of(lab) == "loo"}
        signs = {lab: sign_of(lab) for lab in methods}
        f = agreement(methods, refs, k, signs)
        if len(f):
            frames.append(f.assign(task=task, n=n))
    if not frames:
        return pd.DataFrame()
    f = pd.concat(frames, ignore_index=True)
    return f[["task", "n", *[c for c in f.columns if c not in ("task", "n")]]]


def cg_table(plan: StudyPlan) -> pd.DataFrame:
    """Per protocol setting and seed of the CG arm: iterations, largest relative residual, convergence."""
    rows = []
    if "if_cg_gn" not in plan.arms:
        return pd.DataFrame()
    root = plan.arm_root("if_cg_gn")
    for task in plan.tasks:
        for n in plan.protocol_ns:
            cfg = parse_experiment(plan.experiment(task, n), root)
            for path in sorted((cfg.scores_dir / "if").glob("*.pt")):
                s = io.load_scores(cfg, "if", int(path.stem)).get("settings", {})
                rows.append({"task": task, "n": n, "seed": int(path.stem), "hessian": s.get("hessian"),
                             "damping": s.get("damping"), "tol": s.get("tol"),
                             "max_iterations": max(s.get("iterations", [0])),
                             "max_rel_residual": max(s.get("max_rel_residual", [float("nan")])),
                             "converged": s.get("converged"),
                             "negative_curvature": sum(s.get("negative_curvature", [0])), "seconds": s.get("seconds")})
    return pd.DataFrame(rows)
