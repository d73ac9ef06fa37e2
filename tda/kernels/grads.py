"""Per-sample gradients of the paper's CNNs in factored form: their dot products without materialising them.

A linear layer's per-sample gradient is an outer product: weight h_b d_b^T (its input h_b, the
gradient d_b at its output) and bias d_b. Over that layer g_a . g_b = (h_a . h_b + 1)(d_a . d_b), and a
vector (W, c) dots it as h_b^T W d_b + c . d_b. The linear layers hold 90% of the CNN's parameters, so
GD, GC and IF's last step become small matrix products over h and d, and only the convolutions'
per-sample gradients are written out (a tenth of the memory, none of the page faults of a fresh
[M, P] matrix per checkpoint). Only the order of floating-point sums differs from materialised gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.functional import Params, unflatten
from . import forward as K
from .blocks import Workspace
from .layout import CNNSpec, one_hot, to_kernel, views


@dataclass
class FactoredGrads:
    """Per-sample gradients of B samples (an `engine.grads.GradientSet`): the convolutions' [B, numel] per
    parameter, each linear layer's (h, d)."""

    spec: CNNSpec
    like: Params  # the model's parameters (names and shapes of the flatten order)
    conv: dict[str, torch.Tensor]
    fcs: list[tuple[torch.Tensor, torch.Tensor]]

    def dot(self, other: "FactoredGrads") -> torch.Tensor:
        """g_a . g_b for every pair, [A, B]."""
        out = sum(a @ other.conv[n].T for n, a in self.conv.items())
        for (h, d), (h2, d2) in zip(self.fcs, other.fcs):
            out = out + (h @ h2.T).add_(1) * (d @ d2.T)
        return out

    def norms(self) -> torch.Tensor:
        """||g_b|| of every sample, [B]."""
        sq = sum((a * a).sum(1) for a in self.conv.values())
        for h, d in self.fcs:
            sq = sq + ((h * h).sum(1) + 1) * (d * d).sum(1)
        return sq.sqrt()

    def dot_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_r . g_b for flattened vectors [R, P] (`functional.flatten` order), [R, B]."""
        return self.dot_kernel_vectors(to_kernel(self.spec, unflatten(vectors, self.like)))

    def dot_kernel_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_r . g_b for kernel-layout vectors [R, P], [R, B]."""
        r, v = len(vectors), views(self.spec, vectors)
        out = sum(v[n].reshape(r, -1) @ a.T for n, a in self.conv.items())
        for (name, n_in, n_out), (h, d) in zip(self.spec.fcs, self.fcs):
            hw = (h @ v[f"{name}.weight"].permute(1, 0, 2).reshape(n_in, r * n_out)).view(-1, r, n_out)
            out = out + (hw.add_(v[f"{name}.bias"]) * d.unsqueeze(1)).sum(2).T
        return out


def factored_grads(spec: CNNSpec, params: Params, x: torch.Tensor, y: torch.Tensor,
                   chunk: int = 256) -> FactoredGrads:
    """The factored per-sample gradients of the mean-free loss CE_b of every sample, a chunk at a time."""
    p = views(spec, to_kernel(spec, params))
    names = [f"{c.name}.{t}" for c in spec.convs for t in ("weight", "bias")]
    shapes = spec.shapes()
    conv = {n: x.new_empty(len(y), *shapes[n]) for n in names}
    parts: list[list] = []
    ws = Workspace()
    with torch.no_grad():
        for i in range(0, len(y), chunk):
            xb, yb, fcs = x[i:i + chunk], y[i:i + chunk], []
            onehot = one_hot(spec, yb, x.dtype)
            K.loss_grad(spec, p, K.first_cols(spec, xb), onehot, x.new_ones(len(yb)),
                        {n: conv[n][i:i + chunk] for n in names}, ws, per_sample=True, fc_factors=fcs)
            parts.append(fcs)
    fcs = [(torch.cat([c[j][0] for c in parts]), torch.cat([c[j][1] for c in parts])) for j in range(len(spec.fcs))]
    return FactoredGrads(spec, params, {n: t.view(len(y), -1) for n, t in conv.items()}, fcs)
