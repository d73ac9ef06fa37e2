"""What the seed noise is made of: tau's variance across seeds when both sources vary, or only one.

Pure maths over arrays. Three ensembles of the same seeds: `both` (seed k sets the initialisation and
the batch order, the paper's), `init` (seed k sets the initialisation, the batch order is the
reference seed's) and `batch` (the reverse). Model tau(a, b) = m + A(a) + B(b) + AB(a, b) for an
initialisation a and a batch order b, the three terms independent with variances s_A, s_B, s_AB. Then,
per pair and in expectation,

    V_both = s_A + s_B + s_AB,    V_init = s_A + s_AB,    V_batch = s_B + s_AB,

so s_A = V_both - V_batch (the initialisation's own share), s_B = V_both - V_init (the batch order's)
and s_AB = V_init + V_batch - V_both (what neither explains alone: their interaction, and any noise
the model leaves out). Pooled over pairs, each as a fraction of V_both, these are the shares reported;
sampling error can make an estimated share negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SOURCES = ("both", "init", "batch")
COMPONENTS = {"init": "initialisation", "batch": "batch order", "interaction": "interaction / remainder"}


@dataclass(frozen=True)
class Decomposition:
    """Pooled across-seed variances of tau (mean over pairs) per source, and the shares of V_both."""

    v_both: float
    v_init: float
    v_batch: float

    @property
    def shares(self) -> dict[str, float]:
        """{init, batch, interaction}: s_A, s_B and s_AB as fractions of V_both (nan when V_both = 0)."""
        if self.v_both <= 0:
            return {k: float("nan") for k in COMPONENTS}
        return {"init": (self.v_both - self.v_batch) / self.v_both,
                "batch": (self.v_both - self.v_init) / self.v_both,
                "interaction": (self.v_init + self.v_batch - self.v_both) / self.v_both}

    @property
    def ratios(self) -> dict[str, float]:
        """V_init / V_both and V_batch / V_both: the variance left when only that source varies."""
        if self.v_both <= 0:
            return {"init": float("nan"), "batch": float("nan")}
        return {"init": self.v_init / self.v_both, "batch": self.v_batch / self.v_both}


def pooled_variance(per_seed: np.ndarray) -> float:
    """Across-seed sample variance (ddof 1) of tau [S, N, M], averaged over all pairs."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"a variance needs at least 2 seeds, got {x.shape[0]}")
    return float(x.var(axis=0, ddof=1).mean())


def decompose(per_seed: dict[str, np.ndarray]) -> Decomposition:
    """The decomposition from tau per seed [S, N, M] of each source ('both', 'init', 'batch')."""
    missing = [s for s in SOURCES if s not in per_seed]
    if missing:
        raise ValueError(f"missing ensembles {missing}: need {SOURCES}")
    shapes = {s: np.shape(per_seed[s])[1:] for s in SOURCES}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the three ensembles cover different pairs: {shapes}")
    return Decomposition(*(pooled_variance(per_seed[s]) for s in SOURCES))


def bootstrap_shares(per_seed: dict[str, np.ndarray], reps: int = 200, seed: int = 0,
                     level: float = 0.9) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the shares, resampling the seeds of each ensemble independently (draws of a single
    seed in an ensemble are left out)."""
    rng = np.random.default_rng(seed)
    x = {s: np.asarray(per_seed[s], dtype=np.float64) for s in SOURCES}
    draws: dict[str, list[float]] = {k: [] for k in COMPONENTS}
    for _ in range(reps):
        draw = {s: rng.integers(0, len(v), len(v)) for s, v in x.items()}
        if any(len(np.unique(i)) < 2 for i in draw.values()):
            continue  # one seed drawn over and over has no variance (only rounding): likely with few seeds
        d = decompose({s: x[s][i] for s, i in draw.items()})
        for k, v in d.shares.items():
            draws[k].append(v)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {k: (float(np.nanquantile(v, lo)), float(np.nanquantile(v, hi))) for k, v in draws.items()}

