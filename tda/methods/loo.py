"""Leave-one-out retraining (DESIGN 5, LOO): all N leave-one-out models trained at once as one vmapped ensemble.

Removing training sample j only sets its per-sample weight to 0 in the batch loss (the batch mean
still divides by the batch's full size), so every leave-one-out model sees the same batch sequence
and the N retrainings are one ensemble of stacked parameters, each member with its own Adam state.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import grad, vmap

from .common import Params, adam_init, adam_step, ensemble_losses, member, per_sample_losses, stack, use_vmap

PROTOCOLS = ("paper", "paired", "scratch")
LR = float | Callable[[int], float]


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
                   batches: Sequence[Sequence[torch.Tensor]], weights: torch.Tensor, lr: LR, weight_decay: float,
                   *, snapshot_epochs: Sequence[int] | None = None,
                   evaluate: Callable[[Params], torch.Tensor] | None = None, chunk: int | None = None,
                   train_mode: bool = False, vectorize: bool | None = None,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> list:
    """Train K = len(weights) copies of `params` with Adam on the same batches, member k's loss weighted by weights[k].

    batches: per epoch, the index tensors of its batches (the training run's shuffled order).
    lr: a float, or a callable giving the learning rate of the s-th optimiser step (0-based), as an
        LR scheduler would have set it before that step.
    After each epoch in `snapshot_epochs` (0-based; default: the last) the stacked member parameters
    are passed to `evaluate` (model in eval mode) and its [k, ...] result kept; without `evaluate`
    the stacked parameters themselves are kept. Returns, per snapshot epoch, the results of all K
    members concatenated. Members are independent, so training them `chunk` at a time is exact; the
    RNG is rewound for every chunk and vmap uses randomness='same', so dropout (train_mode=True)
    draws one mask per step shared by all members of every chunk. vectorize: vmap the members'
    gradients (default: on CUDA only, see common.use_vmap); the loop alternative rewinds the RNG for
    every member so dropout masks are shared there too.
    """
    device = x.device
    k_all = weights.shape[0]
    snaps = sorted(set(snapshot_epochs if snapshot_epochs is not None else [len(batches) - 1]))
    chunk = chunk or k_all
    was_training = model.training

    def member_loss(p, w, xb, yb):
        return (w * per_sample_losses(model, p, frozen, xb, yb)).sum() / len(yb)

    if use_vmap(device, vectorize):
        member_grads = vmap(grad(member_loss), in_dims=(0, 0, None, None), randomness="same")
    else:
        one_grad = grad(member_loss)

        def member_grads(members, w, xb, yb):
            start = _rng_state(device) if train_mode else None
            gs = []
            for k in range(len(w)):
                if start is not None:
                    _set_rng_state(start, device)
                gs.append(one_grad(member(members, k), w[k], xb, yb))
            return {n: torch.stack([g[n] for g in gs]) for n in members}
    rng = _rng_state(device)
    results: list[list] = [[] for _ in snaps]
    try:
        for start in range(0, k_all, chunk):
            _set_rng_state(rng, device)
            w = weights[start:start + chunk]
            members = stack(params, len(w))
            state = adam_init(members)
            step = 0
            for epoch in range(snaps[-1] + 1):
                model.train(train_mode)
                for idx in batches[epoch]:
                    idx = idx.to(device)
                    g = member_grads(members, w[:, idx], x[idx], y[idx])
                    adam_step(members, g, state, lr(step) if callable(lr) else lr, weight_decay, betas, eps)
                    step += 1
                if epoch in snaps:
                    model.eval()
                    out = evaluate(members) if evaluate is not None else {n: t.clone() for n, t in members.items()}
                    results[snaps.index(epoch)].append(out)
    finally:
        model.train(was_training)
    if evaluate is not None:
        return [torch.cat(r) for r in results]
    return [{n: torch.cat([c[n] for c in r]) for n in r[0]} for r in results]


def loo_continue(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor, batches: Sequence[Sequence[torch.Tensor]], lr: LR,
                 weight_decay: float, paired: bool = False, chunk: int | None = None, train_mode: bool = False,
                 eval_chunk: int = 4096, vectorize: bool | None = None) -> torch.Tensor:
    """LOO from a checkpoint theta (protocols paper / paired), tau [N, M] = L_i(theta_-j) - L_i(baseline).

    Every theta_-j continues from theta with a fresh Adam over all of `batches` without sample j.
    paired=False (the reference): baseline = theta itself. paired=True: baseline = a control member
    that continues with nothing removed on the same batches, so tau measures removal only.
    """
    n = len(y_train)
    weights = removal_weights(n, paired, x_train.device, next(iter(params.values())).dtype)

    def evaluate(members):
        return ensemble_losses(model, members, frozen, x_test, y_test, pair_chunk=eval_chunk, vectorize=vectorize)

    losses = train_ensemble(model, params, frozen, x_train, y_train, batches, weights, lr, weight_decay,
                            evaluate=evaluate, chunk=chunk, train_mode=train_mode,
                            vectorize=vectorize)[0]
    if paired:
        return losses[1:] - losses[:1]
    with torch.no_grad():
        base = per_sample_losses(model, params, frozen, x_test, y_test)
    return losses - base.unsqueeze(0)


def loo_scratch(model: nn.Module, params0: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                x_test: torch.Tensor, y_test: torch.Tensor, batches: Sequence[Sequence[torch.Tensor]], lr: LR,
                weight_decay: float, snapshot_epochs: Sequence[int], chunk: int | None = None,
                train_mode: bool = False, eval_chunk: int = 4096,
                vectorize: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LOO from the initialisation (protocol scratch): tau [S, N, M] = L_i(theta_-j,c) - L_i(theta_c) per snapshot c.

    The full model theta_c is the ensemble's own control member (trained side by side on identical
    batches), so tau is paired. Also returns the control member's test losses [S, M], e.g. to check
    them against the saved checkpoints.
    """
    n = len(y_train)
    weights = removal_weights(n, True, x_train.device, next(iter(params0.values())).dtype)

    def evaluate(members):
        return ensemble_losses(model, members, frozen, x_test, y_test, pair_chunk=eval_chunk, vectorize=vectorize)

    losses = torch.stack(train_ensemble(model, params0, frozen, x_train, y_train, batches, weights, lr,
                                        weight_decay, snapshot_epochs=snapshot_epochs, evaluate=evaluate,
                                        chunk=chunk, train_mode=train_mode, vectorize=vectorize))
    return losses[:, 1:] - losses[:, :1], losses[:, 0]
