"""Functional building blocks of every method: losses and per-sample gradients through `torch.func`.

The contract every method relies on (CNN and ViT-LoRA alike):
  model   an nn.Module in eval mode (no dropout whenever a loss or gradient is measured)
  params  dict name -> tensor of the *trainable* parameters attributions are taken over
  frozen  dict name -> tensor of everything else `functional_call` needs (frozen weights, buffers)
  loss    a per-sample loss `loss(outputs, targets) -> [B]` (default: cross-entropy, the paper's)
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
#: a per-sample loss: (model outputs [B, ...], targets [B, ...]) -> one loss per sample [B]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# torch's forward-mode AD (used by the Hessian-vector products) scripts its own decompositions on
# first use and warns about its own use of torch.jit.script: not actionable here, so it is muted
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning,
                        module=r"torch\.")


def split_params(model: nn.Module) -> tuple[Params, Params]:
    """(trainable params, frozen params + buffers), detached, as functional_call wants them."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    return params, frozen


def output_logits(out) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or a Hugging Face output's `.logits`."""
    return out.logits if hasattr(out, "logits") else out


def logits(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor) -> torch.Tensor:
    """Model outputs with the given parameters (a batch in, a batch out)."""
    return output_logits(functional_call(model, {**frozen, **params}, (x,)))


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample, [B]: the default loss (the CNN kernels compute exactly this one)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def batch_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: Loss = cross_entropy) -> torch.Tensor:
    """The mean loss of a training batch; cross-entropy by torch's own mean reduction, as the reference trains."""
    return F.cross_entropy(outputs, targets) if loss is cross_entropy else loss(outputs, targets).mean()


def per_sample_losses(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                      loss: Loss = cross_entropy) -> torch.Tensor:
    """The loss of every sample, [B]."""
    return loss(logits(model, params, frozen, x), y)


def mean_loss(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
              loss: Loss = cross_entropy) -> torch.Tensor:
    """Mean loss over a batch (no weight decay)."""
    return per_sample_losses(model, params, frozen, x, y, loss).mean()


def flatten(tensors: Params, batch_dims: int = 0) -> torch.Tensor:
    """Concatenate a dict of tensors into one vector (or [B, P] with batch_dims=1), in dict order."""
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in tensors.values()], dim=-1)


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    """Inverse of `flatten` for a vector [P] or batch [B, P]."""
    out, i = {}, 0
    lead = vec.shape[:-1]
    for k, t in like.items():
        out[k] = vec[..., i:i + t.numel()].reshape(*lead, *t.shape)
        i += t.numel()
    return out


def per_sample_grads(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                     chunk: int = 256, loss: Loss = cross_entropy) -> torch.Tensor:
    """Flattened gradient of each sample's loss w.r.t. params, [B, P], by vmap(grad) in chunks."""
    def one(p, xi, yi):
        return per_sample_losses(model, p, frozen, xi.unsqueeze(0), yi.unsqueeze(0), loss).squeeze(0)

    g = vmap(grad(one), in_dims=(None, 0, 0))
    return torch.cat([flatten(g(params, x[i:i + chunk], y[i:i + chunk]), batch_dims=1)
                      for i in range(0, len(x), chunk)])
