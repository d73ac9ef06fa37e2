"""LDS retrainings: S random subsets of the training set as masks, and the outcomes of retraining the seed on every
subset at once as one ensemble (one member per mask, plus a control member that keeps every sample)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..dispatch import member_logits, train_ensemble
from ..engine.ensemble import LR, Batches
from ..engine.functional import Params


def subset_size(n: int, alpha: float) -> int:
    """Samples per subset: round(alpha N), kept within 1..N-1 so that every subset leaves something in and out."""
    if n < 2:
        raise ValueError(f"subsets need at least 2 training samples, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return min(n - 1, max(1, round(alpha * n)))


def subset_masks(n: int, subsets: int, alpha: float, seed: int) -> torch.Tensor:
    """S random subsets of the N training samples as a bool mask [S, N], each of exactly `subset_size` samples."""
    size = subset_size(n, alpha)
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for s in range(subsets):
        masks[s, torch.randperm(n, generator=g)[:size]] = True
    return masks


def margins(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct-class margin of every sample, TRAK's: log(p_y / (1 - p_y)) = its label's logit minus the log-sum-exp of
    the other logits, [M]."""
    correct = out.gather(1, y[:, None]).squeeze(1)
    others = out.scatter(1, y[:, None], float("-inf")).logsumexp(1)
    return correct - others


def member_outcomes(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                    chunk: int = 1000, vectorize: bool | None = None) -> torch.Tensor:
    """Test loss and correct-class margin of every stacked member (model in eval mode), [K, 2, M]."""
    out = member_logits(model, stacked, frozen, x, chunk, vectorize)
    return torch.stack([torch.stack([F.cross_entropy(o, y, reduction="none"), margins(o, y)]) for o in out])


@dataclass(frozen=True)
class Outcomes:
    """Per snapshot epoch c, subset s and test sample i: loss and margin [C, S, M]; the control member's [C, M]."""

    loss: torch.Tensor
    margin: torch.Tensor
    control_loss: torch.Tensor
    control_margin: torch.Tensor


def subset_weights(masks: torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-sample loss weights [S + 1, N]: an all-ones control row, then one 0/1 row per subset."""
    masks = torch.as_tensor(masks).to(device=device, dtype=dtype)
    return torch.cat([torch.ones(1, masks.shape[1], device=device, dtype=dtype), masks])


def masked_ensemble(model: nn.Module, params0: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, batches: Batches, lr: LR, weight_decay: float,
                    masks: torch.Tensor, snapshot_epochs: Sequence[int], chunk: int | None = None,
                    train_mode: bool = False, vectorize: bool | None = None) -> Outcomes:
    """Retrain from params0 on every subset at once (one member per mask, plus the full-data control member) on
    `batches`, and measure every member's test losses and margins after each snapshot epoch."""
    weights = subset_weights(masks, x_train.device, next(iter(params0.values())).dtype)

    def evaluate(members: Params) -> torch.Tensor:
        return member_outcomes(model, members, frozen, x_test, y_test, vectorize=vectorize)

    out = torch.stack(train_ensemble(model, params0, frozen, x_train, y_train, batches, weights, lr, weight_decay,
                                     snapshot_epochs=snapshot_epochs, evaluate=evaluate, chunk=chunk,
                                     train_mode=train_mode, vectorize=vectorize))  # [C, S + 1, 2, M]
    return Outcomes(out[:, 1:, 0], out[:, 1:, 1], out[:, 0, 0], out[:, 0, 1])
