"""Per-sample gradients as GD, GC and IF use them: dot products, norms, and dot products with given vectors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cnn_grads import FactoredGrads, factored_grads
from .cnn_layout import cnn_spec
from .functional import Params, per_sample_grads


@dataclass
class Grads:
    """Materialised per-sample gradients [B, P] (`functional.flatten` order)."""

    g: torch.Tensor

    def dot(self, other: "Grads") -> torch.Tensor:
        """g_a . g_b for every pair, [A, B]."""
        return self.g @ other.g.T

    def norms(self) -> torch.Tensor:
        """||g_b||, [B]."""
        return self.g.norm(dim=1)

    def dot_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_r . g_b for flattened vectors [R, P], [R, B]."""
        return vectors @ self.g.T


def sample_grads(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                 chunk: int = 256) -> Grads | FactoredGrads:
    """Every sample's loss gradient w.r.t. params: factored for the paper's CNNs on the CPU, else vmap(grad)."""
    spec = cnn_spec(model, params, frozen, x)
    if spec is None:
        return Grads(per_sample_grads(model, params, frozen, x, y, chunk))
    return factored_grads(spec, params, x, y, chunk)
