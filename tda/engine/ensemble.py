"""Ensembles of stacked parameters through `torch.func`: K copies of any model trained and evaluated side by side.

LOO's N retrainings and ATS's N perturbed models are such ensembles. Members are independent, so
any split into chunks is exact; by default a chunk is as many members as free memory holds
(`memory`). Members' gradients are `vmap`ped on CUDA; on the CPU a vmapped convolution becomes a
grouped convolution that measured slower than a loop of ordinary batched calls, so there members
are looped (`use_vmap`), one member's gradient and Adam step at a time. (The paper's CNNs on the CPU
run the same ensembles through `tda.kernels` instead; `tda.dispatch` chooses.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import grad, vmap

from .adam import BETAS, EPS, AdamState, adam_init, adam_step
from .functional import Loss, Params, cross_entropy, logits, per_sample_grads, per_sample_losses, unflatten
from .memory import default_chunk

#: a learning rate: constant, or a function of the 0-based optimiser step (as an LR scheduler sets it before that step)
LR = float | Callable[[int], float]
#: per epoch, the index tensors of its batches
Batches = Sequence[Sequence[torch.Tensor]]


def stack(params: Params, k: int) -> Params:
    """K independent copies of `params`, stacked on a new leading member dimension."""
    return {n: t.detach().unsqueeze(0).expand(k, *t.shape).clone() for n, t in params.items()}


def member(stacked: Params, k: int) -> Params:
    """Member k of stacked parameters."""
    return {n: t[k] for n, t in stacked.items()}


def n_members(stacked: Params) -> int:
    """How many members stacked parameters hold."""
    return next(iter(stacked.values())).shape[0]


def use_vmap(device: torch.device, vectorize: bool | None) -> bool:
    """Whether to vmap over ensemble members: by default on CUDA only (see the module docstring)."""
    return device.type == "cuda" if vectorize is None else vectorize


def learning_rate_at(lr: LR, step: int) -> float:
    """The learning rate of the `step`-th (0-based) optimiser step."""
    return lr(step) if callable(lr) else lr


def snapshots(batches: Batches, snapshot_epochs: Sequence[int] | None) -> list[int]:
    """The sorted 0-based epochs after which an ensemble's members are kept (default: the last)."""
    return sorted(set(snapshot_epochs if snapshot_epochs is not None else [len(batches) - 1]))


def member_losses(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                  chunk: int = 4096, vectorized: bool = False, loss: Loss = cross_entropy) -> torch.Tensor:
    """Per-sample losses of every stacked member on every sample, [K, M]; at most ~`chunk` (member, sample) pairs at once."""
    k = n_members(stacked)
    with torch.no_grad():
        if not vectorized:
            return torch.stack([torch.cat([per_sample_losses(model, member(stacked, j), frozen, x[i:i + chunk],
                                                             y[i:i + chunk], loss) for i in range(0, len(x), chunk)])
                                for j in range(k)])
        f = vmap(lambda p, xx, yy: per_sample_losses(model, p, frozen, xx, yy, loss), in_dims=(0, None, None))
        step = max(1, chunk // max(k, 1))
        return torch.cat([f(stacked, x[i:i + step], y[i:i + step]) for i in range(0, len(x), step)], dim=1)


def member_logits(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor,
                  chunk: int = 1000) -> torch.Tensor:
    """Outputs of every stacked member on every sample, [K, M, outputs], one member and `chunk` samples at a time."""
    with torch.no_grad():
        return torch.stack([torch.cat([logits(model, member(stacked, k), frozen, x[i:i + chunk])
                                       for i in range(0, len(x), chunk)]) for k in range(n_members(stacked))])


def removal_weights(n: int, control: bool, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-sample loss weights [K, N]: row j is all ones but sample j (a leading all-ones control row if `control`)."""
    w = 1 - torch.eye(n, device=device, dtype=dtype)
    if control:
        w = torch.cat([torch.ones(1, n, device=device, dtype=dtype), w])
    return w


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def train_ensemble(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                   batches: Batches, weights: torch.Tensor, lr: LR, weight_decay: float,
                   *, snapshot_epochs: Sequence[int] | None = None,
                   evaluate: Callable[[Params], torch.Tensor] | None = None, chunk: int | None = None,
                   train_mode: bool = False, vectorized: bool = False,
                   betas: tuple[float, float] = BETAS, eps: float = EPS, loss: Loss = cross_entropy) -> list:
    """Train K = len(weights) copies of `params` with Adam on the same batches, member k's loss weighted by weights[k].

    batches: per epoch, the index tensors of its batches (the training run's shuffled order).
    lr: a float, or a callable giving the learning rate of the s-th optimiser step (0-based), as an
        LR scheduler would have set it before that step.
    After each epoch in `snapshot_epochs` (0-based; default: the last) the stacked member parameters
    are passed to `evaluate` (model in eval mode) and its [k, ...] result kept; without `evaluate`
    the stacked parameters themselves are kept. Returns, per snapshot epoch, the results of all K
    members concatenated. Members are trained `chunk` at a time; the RNG is rewound for every chunk
    and vmap uses randomness='same', so dropout (train_mode=True) draws one mask per step shared by
    all members; the member loop rewinds the RNG for every member, so it shares the masks too.
    """
    device = x.device
    k_all = weights.shape[0]
    snaps = snapshots(batches, snapshot_epochs)
    if chunk is None:
        samples = max(len(idx) for epoch in batches for idx in epoch)
        chunk = default_chunk(model, params, frozen, x, samples, k_all, training=True, vectorized=vectorized)
    batches = [[idx.to(device) for idx in epoch] for epoch in batches[:snaps[-1] + 1]]
    was_training = model.training

    def member_loss(p, w, xb, yb):
        return (w * per_sample_losses(model, p, frozen, xb, yb, loss)).sum() / len(yb)

    if vectorized:
        member_grads = vmap(grad(member_loss), in_dims=(0, 0, None, None), randomness="same")

        def train_step(members: Params, states: list[AdamState], w, xb, yb, lr_now: float) -> None:
            adam_step(members, member_grads(members, w, xb, yb), states[0], lr_now, weight_decay, betas, eps)
    else:
        one_grad = grad(member_loss)

        def train_step(members: Params, states: list[AdamState], w, xb, yb, lr_now: float) -> None:
            # one member at a time, gradient then its own Adam step: nothing member-stacked is allocated per step
            start = _rng_state(device) if train_mode else None
            for k in range(len(w)):
                if start is not None:
                    _set_rng_state(start, device)
                p = member(members, k)
                adam_step(p, one_grad(p, w[k], xb, yb), states[k], lr_now, weight_decay, betas, eps)
    rng = _rng_state(device)
    results: list[list] = [[] for _ in snaps]
    try:
        for start in range(0, k_all, chunk):
            _set_rng_state(rng, device)
            w = weights[start:start + chunk]
            members = stack(params, len(w))
            state = adam_init(members)
            states = [state] if vectorized else [AdamState(0, member(state.exp_avg, k), member(state.exp_avg_sq, k))
                                                 for k in range(len(w))]
            step = 0
            for epoch in range(snaps[-1] + 1):
                model.train(train_mode)
                for idx in batches[epoch]:
                    train_step(members, states, w[:, idx], x[idx], y[idx], learning_rate_at(lr, step))
                    step += 1
                if epoch in snaps:
                    model.eval()
                    out = evaluate(members) if evaluate is not None else {n: t.clone() for n, t in members.items()}
                    results[snaps.index(epoch)].append(out)
    finally:
        model.train(was_training)
    return concat_snapshots(results, evaluate is not None)


def concat_snapshots(results: list[list], evaluated: bool) -> list:
    """Per snapshot epoch, its chunks' results joined along the member dimension."""
    if evaluated:
        return [torch.cat(r) for r in results]
    return [{n: torch.cat([c[n] for c in r]) for n in r[0]} for r in results]


def one_step_losses(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float, member_chunk: int, grad_chunk: int = 256,
                    eval_chunk: int = 4096, vectorized: bool = False, loss: Loss = cross_entropy) -> torch.Tensor:
    """Test losses [N + 1, M]: of theta (row 0), then of each theta'_j = theta after one fresh-Adam step on {z_j}.

    All N steps follow from the per-sample gradients; the functional Adam step itself is applied to the
    stacked gradients, so the rounding is torch.optim.Adam's. `member_chunk` models are evaluated at once.
    """
    # theta's own losses through the same path as its perturbed members
    out = [member_losses(model, stack(params, 1), frozen, x_test, y_test, eval_chunk, vectorized, loss)]
    g = per_sample_grads(model, params, frozen, x_train, y_train, grad_chunk, loss)
    for j in range(0, len(g), member_chunk):
        members = stack(params, len(g[j:j + member_chunk]))
        adam_step(members, unflatten(g[j:j + member_chunk], params), adam_init(members), lr, weight_decay, betas, eps)
        out.append(member_losses(model, members, frozen, x_test, y_test, eval_chunk, vectorized, loss))
    return torch.cat(out)
