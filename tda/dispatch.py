"""Which implementation computes a method's building blocks, decided in one place: the CNN CPU kernels
(`tda.kernels`) or the generic `torch.func` engine (`tda.engine`).

The kernels run exactly when the model is one of the paper's CNN classes (not a subclass, which may change
`forward`), every parameter is attributed over, the loss is the default cross-entropy (`engine.functional.
cross_entropy` itself), the inputs are image batches on the CPU in float32 or float64, and ensemble members
are looped rather than vmapped (`vectorize` False, or None on the CPU).
Everything else runs on the engine; `vectorize=True` forces the vmapped engine path anywhere (CUDA's
default, tested on the CPU). The two paths differ only in the order of floating-point sums.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .engine import ensemble as E
from .engine.adam import BETAS, EPS
from .engine.ensemble import LR, Batches, stack, use_vmap
from .engine.functional import Loss, Params, cross_entropy, per_sample_grads
from .engine.grads import GradientSet, Grads
from .engine.hvp import HESSIANS, batched_gnvp, batched_hvp
from .engine.memory import default_chunk, parameter_chunk
from .kernels import ensemble as KE
from .kernels import native
from .kernels.ensemble import sample_grads as kernel_sample_grads
from .kernels.grads import factored_grads
from .kernels.hvp import kernel_hvp, model_hvp
from .kernels.layout import KERNEL_MODELS, CNNSpec, spec_for, to_kernel


def kernel_spec(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor,
                vectorize: bool | None = None, loss: Loss = cross_entropy) -> CNNSpec | None:
    """The CNN kernels' spec when they compute this (model, parameters, inputs, vectorize, loss) on x's device;
    else None."""
    if use_vmap(x.device, vectorize) or loss is not cross_entropy:
        return None
    return spec_for(model, params, frozen, x)


def _kernels_path() -> str:
    return "C kernels" if native.library() is not None else "CNN kernels on torch ops"


def path(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, vectorize: bool | None = None,
         loss: Loss = cross_entropy) -> str:
    """Which path computes for these arguments, in words: 'C kernels', 'CNN kernels on torch ops', or 'vmapped
    members' / 'torch.func' on the device."""
    if kernel_spec(model, params, frozen, x, vectorize, loss) is not None:
        return _kernels_path()
    return f"{'vmapped members' if use_vmap(x.device, vectorize) else 'torch.func'} on {x.device.type}"


def planned_path(model_type: type, device: torch.device | str) -> str:
    """The path a method's blocks take for a model class on a device (`path`'s words), known before any data is
    loaded: what the scores' provenance records."""
    device = torch.device(device)
    if not use_vmap(device, None) and model_type in KERNEL_MODELS:
        return _kernels_path()
    return f"{'vmapped members' if use_vmap(device, None) else 'torch.func'} on {device.type}"


def sample_grads(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                 chunk: int = 256, vectorize: bool | None = None, loss: Loss = cross_entropy) -> GradientSet:
    """Every sample's loss gradient w.r.t. params: factored (kernels) or materialised by vmap(grad)."""
    spec = kernel_spec(model, params, frozen, x, vectorize, loss)
    if spec is None:
        return Grads(per_sample_grads(model, params, frozen, x, y, chunk, loss))
    return factored_grads(spec, params, x, y, chunk)


def curvature_product(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                      vectors: torch.Tensor, hessian: str = "exact", data_chunk: int | None = None,
                      vec_chunk: int = 64, vectorize: bool | None = None, loss: Loss = cross_entropy) -> torch.Tensor:
    """H v (hessian='exact', the Hessian of the mean loss, no weight decay) or G v ('gauss-newton', its
    Gauss-Newton matrix) for flattened vectors [R, P]."""
    if hessian == "exact":
        spec = kernel_spec(model, params, frozen, x, vectorize, loss)
        if spec is not None:
            return model_hvp(spec, params, x, y, vectors, data_chunk, vec_chunk)
        return batched_hvp(model, params, frozen, x, y, vectors, data_chunk, vec_chunk, loss)
    if hessian == "gauss-newton":
        return batched_gnvp(model, params, frozen, x, vectors, data_chunk, vec_chunk, y, loss)
    raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")


@dataclass
class Coordinates:
    """Where a method's vectors over the attributed parameters live for one model: the `functional.flatten` order
    (the generic engine) or the CNN kernels' layout (a permutation of it, so dot products and norms are the same in
    either). Gradients, curvature products and dot products with gradient sets all in one of them, so that an
    iterative solver (LiSSA, CG) never converts its vectors between the two."""

    model: nn.Module
    params: Params
    frozen: Params
    spec: CNNSpec | None  # None: the flatten order, the engine computes
    hessian: str = "exact"
    vectorize: bool | None = None
    loss: Loss = cross_entropy

    def grads(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Every sample's loss gradient, materialised in these coordinates, [B, P]."""
        if self.spec is None:
            return per_sample_grads(self.model, self.params, self.frozen, x, y, chunk, self.loss)
        flat = to_kernel(self.spec, self.params)
        out = x.new_empty(len(y), self.spec.numel)
        for i in range(0, len(y), chunk):
            out[i:i + chunk] = kernel_sample_grads(self.spec, flat, x[i:i + chunk], y[i:i + chunk])
        return out

    def dot_grads(self, vectors: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """v_r . g_b for vectors [R, P] in these coordinates and the loss gradients of the samples (x, y), [R, B]."""
        if self.spec is None:
            return sample_grads(self.model, self.params, self.frozen, x, y, chunk, self.vectorize,
                                self.loss).dot_vectors(vectors)
        return factored_grads(self.spec, self.params, x, y, chunk).dot_kernel_vectors(vectors)

    def curvature(self, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor, data_chunk: int | None = None,
                  vec_chunk: int = 64, out: torch.Tensor | None = None) -> torch.Tensor:
        """`curvature_product` (H v or G v) for vectors [R, P] in these coordinates; the kernels write it into `out`
        when given (a buffer the caller reuses; not the vectors' memory)."""
        if self.spec is None:
            return curvature_product(self.model, self.params, self.frozen, x, y, vectors, self.hessian, data_chunk,
                                     vec_chunk, self.vectorize, self.loss)
        return kernel_hvp(self.spec, to_kernel(self.spec, self.params), x, y, vectors, data_chunk, vec_chunk,
                          out=out)


def coordinates(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, hessian: str = "exact",
                vectorize: bool | None = None, loss: Loss = cross_entropy) -> Coordinates:
    """The coordinates an iterative solver works in: the kernels' layout where they compute the gradients and the
    exact Hessian's products (the paper's CNNs on the CPU), else the flatten order."""
    spec = kernel_spec(model, params, frozen, x, vectorize, loss) if hessian == "exact" else None
    return Coordinates(model, params, frozen, spec, hessian, vectorize, loss)


def member_losses(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                  chunk: int = 4096, vectorize: bool | None = None, loss: Loss = cross_entropy) -> torch.Tensor:
    """Per-sample losses of every stacked member on every sample, [K, M]."""
    spec = kernel_spec(model, stacked, frozen, x, vectorize, loss)
    if spec is not None:
        return KE.member_losses(spec, stacked, x, y)
    return E.member_losses(model, stacked, frozen, x, y, chunk, use_vmap(x.device, vectorize), loss)


def member_logits(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, chunk: int = 1000,
                  vectorize: bool | None = None) -> torch.Tensor:
    """Outputs of every stacked member on every sample, [K, M, outputs] (model in eval mode)."""
    spec = kernel_spec(model, stacked, frozen, x, vectorize)
    if spec is not None:
        return KE.member_logits(spec, stacked, x)
    return E.member_logits(model, stacked, frozen, x, chunk)


def ensemble_losses(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                    member_chunk: int = 64, pair_chunk: int = 4096, vectorize: bool | None = None,
                    loss: Loss = cross_entropy) -> torch.Tensor:
    """`member_losses` with the members themselves also processed `member_chunk` at a time, [K, M]."""
    k = E.n_members(stacked)
    return torch.cat([member_losses(model, {n: t[i:i + member_chunk] for n, t in stacked.items()}, frozen, x, y,
                                    pair_chunk, vectorize, loss) for i in range(0, k, member_chunk)])


def train_ensemble(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                   batches: Batches, weights: torch.Tensor, lr: LR, weight_decay: float,
                   *, snapshot_epochs: Sequence[int] | None = None,
                   evaluate: Callable[[Params], torch.Tensor] | None = None, chunk: int | None = None,
                   train_mode: bool = False, vectorize: bool | None = None,
                   betas: tuple[float, float] = BETAS, eps: float = EPS, loss: Loss = cross_entropy) -> list:
    """K = len(weights) Adam trainings of `params` on the same batches, member k's per-sample losses weighted by
    weights[k] (`engine.ensemble.train_ensemble` explains the arguments); `chunk` members at a time (default: as
    many as free memory holds)."""
    spec = kernel_spec(model, params, frozen, x, vectorize, loss)
    if spec is None:
        return E.train_ensemble(model, params, frozen, x, y, batches, weights, lr, weight_decay,
                                snapshot_epochs=snapshot_epochs, evaluate=evaluate, chunk=chunk,
                                train_mode=train_mode, vectorized=use_vmap(x.device, vectorize), betas=betas, eps=eps,
                                loss=loss)
    # the kernels share one member's activations: members cost their parameters
    chunk = chunk or parameter_chunk(spec.numel, x.element_size(), weights.shape[0], x.device)
    return KE.train_members(spec, params, x, y, batches, weights, lr, weight_decay,
                            E.snapshots(batches, snapshot_epochs), evaluate, chunk, betas, eps)


def one_step_losses(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, lr: float, weight_decay: float,
                    betas: tuple[float, float] = BETAS, eps: float = EPS, member_chunk: int | None = None,
                    grad_chunk: int = 256, eval_chunk: int = 4096, vectorize: bool | None = None,
                    loss: Loss = cross_entropy) -> torch.Tensor:
    """Test losses [N + 1, M] of theta (row 0) and of theta after one fresh-Adam step on each training sample alone;
    `member_chunk` perturbed models at once (default: as many as free memory holds)."""
    spec = kernel_spec(model, params, frozen, x_train, vectorize, loss)
    if spec is not None:
        chunk = member_chunk or parameter_chunk(spec.numel, x_train.element_size(), len(y_train), x_train.device)
        return KE.one_step_losses(spec, params, x_train, y_train, x_test, y_test, lr, weight_decay, betas, eps, chunk)
    if member_chunk is None:
        member_chunk = default_chunk(model, params, frozen, x_test, min(eval_chunk, len(y_test)), len(y_train),
                                     training=False, vectorized=False)
    return E.one_step_losses(model, params, frozen, x_train, y_train, x_test, y_test, lr, weight_decay, betas, eps,
                             member_chunk, grad_chunk, eval_chunk, use_vmap(x_train.device, vectorize), loss)


__all__ = ["HESSIANS", "Coordinates", "coordinates", "curvature_product", "ensemble_losses", "kernel_spec", "member_losses", "one_step_losses",
           "path", "planned_path", "sample_grads", "stack", "train_ensemble"]
