"""Per-sample gradients as GD, GC and IF use them: the interface (`GradientSet`) and its materialised form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GradientSet(Protocol):
    """The loss gradients of B samples, however they are stored (materialised here, factored in `tda.kernels`).

    Every method that needs per-sample gradients uses only these three products; vectors are in
    `functional.flatten` order of the attributed parameters.
    """

    def dot(self, other: "GradientSet") -> torch.Tensor:
        """g_a . g_b for every pair of this set (A) and `other` (B), [A, B]."""

    def norms(self) -> torch.Tensor:
        """||g_b|| of every sample, [B]."""

    def dot_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_r . g_b for flattened vectors [R, P], [R, B]."""


@dataclass
class Grads:
    """Materialised per-sample gradients [B, P] (`functional.flatten` order): a `GradientSet` for any model."""

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
