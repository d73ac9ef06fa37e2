"""Which models the CNN kernels apply to, their layer shapes, and the kernel layout of their parameters.

The kernels compute exactly the paper's `CNN` and `CNN3L` (conv-GELU-maxpool blocks, then linear-GELU-linear):
a subclass may change `forward` (another activation, dropout), so only those classes themselves qualify.

Kernel layout: conv weights [k*k*C_in, C_out] (taps in (ky, kx, c_in) order), linear weights [in, out],
the first linear's inputs in channels-last (h, w, c) order; all of a member's parameters in one flat
vector, in the order of the model's parameter dict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import CNN, CNN3L
from ..engine.functional import Params


@dataclass(frozen=True)
class ConvLayer:
    """conv(k, padding)-GELU-maxpool(2) on an h x w input with c_in channels."""

    name: str
    c_in: int
    c_out: int
    k: int
    pad: int
    h: int
    w: int

    @property
    def hp(self) -> int:
        return (self.h + 2 * self.pad - self.k + 1) // 2

    @property
    def wp(self) -> int:
        return (self.w + 2 * self.pad - self.k + 1) // 2


@dataclass(frozen=True)
class CNNSpec:
    """The layer shapes of one CNN on inputs of one size, and the order of its parameters."""

    convs: tuple[ConvLayer, ...]
    fcs: tuple[tuple[str, int, int], ...]
    order: tuple[str, ...]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Kernel-layout shape of every parameter."""
        out = {}
        for c in self.convs:
            out[f"{c.name}.weight"], out[f"{c.name}.bias"] = (c.k * c.k * c.c_in, c.c_out), (c.c_out,)
        for name, n_in, n_out in self.fcs:
            out[f"{name}.weight"], out[f"{name}.bias"] = (n_in, n_out), (n_out,)
        return {n: out[n] for n in self.order}

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes().values())

    def flops_per_sample(self, backward: bool) -> int:
        """Nominal multiply-add FLOPs per sample (the full conv outputs); backward adds weight and input gradients."""
        conv = [2 * (c.h + 2 * c.pad - c.k + 1) * (c.w + 2 * c.pad - c.k + 1) * c.k * c.k * c.c_in * c.c_out
                for c in self.convs]
        fc = [2 * n_in * n_out for _, n_in, n_out in self.fcs]
        fwd = sum(conv) + sum(fc)
        return fwd if not backward else 2 * fwd + sum(conv[1:]) + sum(fc)


#: the model classes the kernels compute (exactly these, not subclasses)
KERNEL_MODELS = (CNN, CNN3L)


def spec_for(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor) -> CNNSpec | None:
    """The spec of a `CNN`/`CNN3L` on inputs like `x` when the kernels apply to it; None for any other model."""
    if type(model) not in KERNEL_MODELS or frozen or x.dim() != 4 or x.device.type != "cpu":
        return None
    if x.dtype not in (torch.float32, torch.float64) or set(params) != {n for n, _ in model.named_parameters()}:
        return None
    if any(t.dtype != x.dtype or t.device != x.device for t in params.values()):
        return None
    convs, fcs = [], []
    _, c, h, w = x.shape
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            ok = (m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and m.bias is not None
                  and m.padding_mode == "zeros" and len(set(m.kernel_size)) == 1 and isinstance(m.padding, tuple)
                  and len(set(m.padding)) == 1 and m.in_channels == c and not fcs)
            if not ok:
                return None
            layer = ConvLayer(name, c, m.out_channels, m.kernel_size[0], m.padding[0], h, w)
            if layer.hp < 1 or layer.wp < 1:
                return None
            convs.append(layer)
            c, h, w = m.out_channels, layer.hp, layer.wp
        elif isinstance(m, nn.Linear) and m.bias is not None:
            fcs.append((name, m.in_features, m.out_features))
        else:
            return None
    if not convs or not fcs or fcs[0][1] != c * h * w or any(a[2] != b[1] for a, b in zip(fcs, fcs[1:])):
        return None
    return CNNSpec(tuple(convs), tuple(fcs), tuple(params))


def _model_dims(spec: CNNSpec, name: str) -> int:
    """Dimensions of a parameter in the model's own layout: conv weight 4, linear weight 2, bias 1."""
    if name.endswith(".bias"):
        return 1
    return 4 if any(name == f"{c.name}.weight" for c in spec.convs) else 2


def to_kernel(spec: CNNSpec, params: Params) -> torch.Tensor:
    """Parameters (any leading member dims) -> one flat kernel-layout vector per member, [..., P]."""
    first, last = f"{spec.fcs[0][0]}.weight", spec.convs[-1]
    parts = []
    for n in spec.order:
        t = params[n]
        lead = t.shape[:t.dim() - _model_dims(spec, n)]
        t = t.reshape(-1, *t.shape[len(lead):])
        if t.dim() == 5:  # conv [L, C_out, C_in, k, k] -> [L, k, k, C_in, C_out]
            t = t.permute(0, 3, 4, 2, 1)
        elif n == first:  # [L, out, (c, h, w)] -> [L, (h, w, c), out]
            t = t.reshape(len(t), -1, last.c_out, last.hp, last.wp).permute(0, 3, 4, 2, 1)
        elif t.dim() == 3:  # linear [L, out, in] -> [L, in, out]
            t = t.transpose(1, 2)
        parts.append(t.reshape(*lead, -1))
    return torch.cat(parts, dim=-1)


def views(spec: CNNSpec, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Kernel-layout views of a flat vector [..., P] (leading dims kept)."""
    out, i = {}, 0
    for n, s in spec.shapes().items():
        size = int(torch.Size(s).numel())
        out[n] = flat[..., i:i + size].view(*flat.shape[:-1], *s)
        i += size
    return out


def from_kernel(spec: CNNSpec, flat: torch.Tensor) -> Params:
    """Inverse of `to_kernel` for flat vectors [K, P]: stacked parameters in the model's own layout."""
    first, last = f"{spec.fcs[0][0]}.weight", spec.convs[-1]
    convs = {f"{c.name}.weight": c for c in spec.convs}
    out = {}
    for n, t in views(spec, flat).items():
        if n in convs:
            c = convs[n]
            t = t.reshape(len(t), c.k, c.k, c.c_in, c.c_out).permute(0, 4, 3, 1, 2)
        elif n == first:
            t = t.reshape(len(t), last.hp, last.wp, last.c_out, -1).permute(0, 4, 3, 1, 2).flatten(2)
        elif t.dim() == 3:
            t = t.transpose(1, 2)
        out[n] = t.contiguous()
    return out


def one_hot(spec: CNNSpec, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Labels as one-hot rows [B, classes] in `dtype`."""
    return torch.nn.functional.one_hot(y, spec.fcs[-1][2]).to(dtype)
