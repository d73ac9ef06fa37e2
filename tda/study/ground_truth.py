"""The study's LDS and advice tables: every method's LDS on the LDS settings, the paper's advice put to the test
against LOO (`scratch`) and the LDS, and the share of significant pairs against K and the number of seeds.

Loading the LDS outcomes is the only I/O here (`tda.lds.evaluate`); the maths are `tda.lds.score` and `advice`.
"""
from __future__ import annotations

import pandas as pd

from .. import stats
from ..config import TDAError, parse_experiment
from ..lds.evaluate import REPS, Attributions, GroundTruth, lds_table, load_truth
from ..lds.score import bootstrap_mean, pair_contributions, pair_effects
from ..results.inventory import MethodScores
from .advice import TESTS, advice_rows, mean_in, seed_counts, share_vs_k, share_vs_seeds, significant, spearman
from .analysis import K_DEFAULT, Loaded
from .plan import MAIN_LABELS, StudyPlan, sign_of

LOO = MAIN_LABELS["loo"]
#: the truths of the advice analysis, in the tables' order
TRUTHS = (f"{LOO} mu", "LDS effect", "LDS contribution")


def load_truths(plan: StudyPlan, loaded: Loaded) -> dict[tuple[str, int], GroundTruth]:
    """The LDS outcomes of every LDS setting that has them (a missing one is noted in `loaded.missing`)."""
    out = {}
    for task in plan.tasks:
        for n in plan.lds_ns:
            e = plan.experiment(task, n)
            try:
                out[(task, n)] = truth = load_truth(parse_experiment(e, plan.root))
            except TDAError:
                loaded.missing.append(f"{e} under {plan.root}: LDS")
                continue
            loaded.files += truth.files
    return out


def _attributions(ms: MethodScores, truth: GroundTruth) -> Attributions | None:
    seeds = [s for s in ms.seeds if s in truth.seeds]
    if not seeds or (ms.train_indices, ms.test_indices) != (truth.train_indices, truth.test_indices):
        return None
    return Attributions(ms.label, sign_of(ms.label), seeds, ms.scores[[ms.seeds.index(s) for s in seeds]])


def lds_study_table(loaded: Loaded, truths: dict, reps: int = REPS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every method's LDS on every LDS setting, the per-test-sample LDS), with task and n."""
    tables, per_test = [], []
    for (task, n), truth in truths.items():
        methods = [a for ms in loaded.main.get((task, n, "both"), {}).values()
                   if (a := _attributions(ms, truth)) is not None]
        if methods:
            t, p = lds_table(truth, methods, reps)
            tables.append(t.assign(task=task, n=n))
            per_test.append(p.assign(task=task, n=n))
    if not tables:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(tables, ignore_index=True), pd.concat(per_test, ignore_index=True)


def posterior_gain(per_test: pd.DataFrame, reps: int = REPS) -> pd.DataFrame:
    """Per setting, method and outcome: the LDS of the posterior mean minus that of one checkpoint (and of K
    checkpoints of one seed), against the posterior target, per test sample, with a 90% interval over them."""
    rows = []
    if per_test.empty:
        return pd.DataFrame()
    p = per_test[per_test["target"] == "posterior"]
    for (task, n, method, outcome), g in p.groupby(["task", "n", "method", "outcome"], sort=False):
        by = g.pivot(index="test_index", columns="scores", values="lds")
        for base in ("checkpoint", "checkpoints"):
            mean, lo, hi = bootstrap_mean((by["posterior_mean"] - by[base]).to_numpy(), reps)
            rows.append({"task": task, "n": n, "method": method, "outcome": outcome, "versus": base,
                         "gain": mean, "gain_lo": lo, "gain_hi": hi})
    return pd.DataFrame(rows)


def advice_table(loaded: Loaded, truths: dict, k: int = K_DEFAULT, reps: int = 500) -> pd.DataFrame:
    """Per LDS setting, method and test: significant vs not significant vs top-|mu| pairs against LOO (`scratch`)
    mu, the LDS subsets' per-pair effect and the per-pair LDS contribution (all sign-aligned, posterior target)."""
    rows = []
    for (task, n), truth in truths.items():
        methods = loaded.main.get((task, n, "both"), {})
        loo = methods.get(LOO)
        observed = truth.observed("loss")[:, -k:].mean(axis=(0, 1))  # [S, M]: minus the loss, seeds' mean
        effect = pair_effects(truth.masks, observed)
        for label, ms in methods.items():
            if (ms.train_indices, ms.test_indices) != (truth.train_indices, truth.test_indices):
                continue
            per = stats.average_last_k(ms.scores, min(k, ms.scores.shape[1]))
            mu = sign_of(label) * per.mean(axis=0)
            contribution = len(mu) * pair_contributions(mu, truth.masks, observed, 1)
            targets = {"LDS effect": (effect, spearman), "LDS contribution": (contribution, mean_in)}
            if loo is not None and label != LOO:
                targets = {f"{LOO} mu": (stats.average_last_k(loo.scores, min(k, loo.scores.shape[1])).mean(0),
                                         spearman), **targets}
            for test in TESTS:
                sig = significant(per, test)
                for r in advice_rows(mu, sig, targets, reps):
                    rows.append({"task": task, "n": n, "method": label, "test": test, "n_seeds": len(ms.seeds),
                                 "share_significant": float(sig.mean()), **r})
    return pd.DataFrame(rows)


def trend_table(plan: StudyPlan, loaded: Loaded) -> pd.DataFrame:
    """Per paper's ensemble and method: the share of significant pairs against K (all seeds) and against the number
    of seeds (at all checkpoints; seed_counts of what the study has)."""
    rows = []
    for (task, n, source), methods in loaded.main.items():
        if source != "both":
            continue
        for label, ms in methods.items():
            base = {"task": task, "n": n, "method": label}
            rows += [{**base, "against": "K", **r} for r in share_vs_k(ms.scores)]
            rows += [{**base, "against": "seeds", "K": ms.scores.shape[1], **r}
                     for r in share_vs_seeds(ms.scores, seed_counts(len(ms.seeds)))]
    return pd.DataFrame(rows)


def headline(advice: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per truth: how many (setting, method, test) the difference "significant - not significant" supports the
    advice, contradicts it, or resolves no difference."""
    d = advice[advice["group"] == "significant - not significant"] if not advice.empty else advice
    return {t: d[d["truth"] == t]["verdict"].value_counts().to_dict() for t in TRUTHS if not d.empty}

