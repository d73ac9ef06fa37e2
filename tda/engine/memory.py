"""Default ensemble chunks from free memory: how many members (LOO models, ATS-perturbed models) to hold at once.

A member costs copies of its trainable parameters (the parameters themselves, Adam's two moments,
the gradient and a temporary when training) and, where members are vmapped, its own activations
for the batch. The chunk is the number of members that fit in a budget: a safety fraction of the
free memory of the device (CUDA's free memory, the CPU's MemAvailable).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .functional import Params, logits

#: the fraction of free memory an ensemble may take (the rest: the allocator's slack, other tensors and processes)
SAFETY = 0.5
#: parameter-sized tensors per member: training keeps params, grad, two Adam moments, a temporary; evaluation the params
TRAIN_COPIES, EVAL_COPIES = 5, 2
#: backward's transient tensors are about as large as the activations the forward saved for it
BACKWARD_FACTOR = 2


def free_bytes(device: torch.device | str) -> int:
    """Free memory of the device: `torch.cuda.mem_get_info` on CUDA, MemAvailable of /proc/meminfo on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


#: set by the seed workers: how many processes share this process's device (and its free memory)
SHARE_ENV = "TDA_DEVICE_SHARE"


def device_share() -> int:
    """How many processes share this device's free memory (1 outside the seed workers)."""
    try:
        return max(1, int(os.environ.get(SHARE_ENV, "1")))
    except ValueError:
        return 1


def budget_bytes(device: torch.device | str, safety: float = SAFETY) -> int:
    """The memory an ensemble may use on `device`: this process's share of a safety fraction of its free memory."""
    return int(free_bytes(device) * safety / device_share())


def member_bytes(n_params: int, element_size: int, activation_bytes: int, training: bool) -> int:
    """Memory of one member: its parameter-sized copies plus `activation_bytes` (its own activations, 0 when shared)."""
    return n_params * element_size * (TRAIN_COPIES if training else EVAL_COPIES) + activation_bytes


def chunk_size(per_member: int, budget: int, n_members: int) -> int:
    """How many members of `per_member` bytes fit in `budget` bytes: between 1 and n_members."""
    return max(1, min(n_members, budget // max(per_member, 1)))


def parameter_chunk(n_params: int, element_size: int, n_members: int, device: torch.device | str,
                    training: bool = True) -> int:
    """Members to hold at once when they share one member's activations (a loop of members): each costs only its
    parameter-sized copies."""
    return chunk_size(member_bytes(n_params, element_size, 0, training), budget_bytes(device), n_members)


def activation_bytes(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in a forward on `x` (not counting parameters and buffers): its activations.

    Draws nothing from the global random generators."""
    skip = {t.untyped_storage().data_ptr() for t in (*params.values(), *frozen.values())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:  # a view counts its own elements; views of one storage count once
            saved[ptr] = max(saved.get(ptr, 0), t.numel() * t.element_size())
        return t

    live = {n: t.detach().requires_grad_(True) for n, t in params.items()}
    # a forked generator: measuring (e.g. through dropout) must not shift the random stream of the run it sizes
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits(model, live, frozen, x)
    return sum(saved.values())


def default_chunk(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, samples: int, n_members: int,
                  training: bool, vectorized: bool, budget: int | None = None) -> int:
    """Members to train (or evaluate) at once; vmapped ones each hold `samples` samples' activations, looped share."""
    budget = budget_bytes(x.device) if budget is None else budget
    n_params = sum(t.numel() for t in params.values())
    element_size = next(iter(params.values())).element_size()
    act = activation_bytes(model, params, frozen, x[:1]) * samples * (BACKWARD_FACTOR if training else 1)
    per_member = member_bytes(n_params, element_size, act if vectorized else 0, training)
    return chunk_size(per_member, budget - (0 if vectorized else act), n_members)
