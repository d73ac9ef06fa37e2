"""Drawing the posterior: our training protocol on a model of your own (`train_posterior`), or your own training
function (`posterior_from`), one model per seed, in memory or saved to a directory as it is trained.

With a directory, every checkpoint is written atomically as soon as it exists and records what it was
computed from (the seed, the data and training constants or the training function's source, the factory's
and the loss's source, the training code); a seed whose saved checkpoints record the same is kept, not
retrained, unless `overwrite`. A function whose source Python cannot read (e.g. a builtin) counts as changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import io, provenance
from ..backends.memory import Factory, MemoryBackend
from ..cli import resolve_device
from ..config import TDAError
from ..engine.functional import Loss, cross_entropy
from ..training import train_member
from .data import Data, as_tensors
from .posterior import Posterior, Training, checkpoint_path, write_index

#: your own training: seed -> the state dicts (or models) of its last checkpoints, in order
TrainFunction = Callable[[int], list]


def source_digest(fn: Any) -> str | None:
    """Digest of a function's (or class's) source text, None when Python cannot read it."""
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _stale(directory: Path, seed: int, epochs: list[int], inputs: dict, overwrite: bool) -> str | None:
    """None when all of a seed's checkpoints are saved and record `inputs`; else why not."""
    if overwrite:
        return "overwrite"
    if any(v is None for v in inputs.values()):
        return "the source of a function is unknown"
    for e in epochs:
        path = checkpoint_path(directory, seed, e)
        if not path.exists():
            return "missing"
        reason = provenance.changed(io.load_tensor_file(path, "checkpoint", "delete it").get("provenance"), inputs)
        if reason is not None:
            return reason
    return None


def _device_rng(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def train_posterior(factory: Factory, train: Data, seeds: Iterable[int], training: Training = Training(),
                    loss: Loss = cross_entropy, test: Data | None = None, device: str | None = None,
                    directory: Path | str | None = None, overwrite: bool = False, progress: bool = True) -> Posterior:
    """One model per seed trained by the reference protocol (the scripts' training loop): `torch.manual_seed(seed)`,
    `factory()`, the shuffled DataLoader's batch order, Adam with L2 weight decay on the mean `loss`; the
    checkpoints after the last `training.checkpoints` epochs are kept (`test`, when given, is scored at each)."""
    x, y = as_tensors(train, "train")
    x_te, y_te = as_tensors(test, "test") if test is not None else (x[:0], y[:0])
    device, seeds = resolve_device(device or "auto"), [int(s) for s in seeds]
    backend = MemoryBackend(training.config(), factory, loss, own_protocol=True)
    epochs = backend.cfg.ckpt_epochs
    post = Posterior(factory, seeds, epochs, training, True, loss)
    common = {"data": provenance.digest([x, y]), "training": dataclasses.asdict(training),
              "factory": source_digest(factory), "loss": source_digest(loss),
              "code": provenance.code_facts(["tda.training", "tda.backends.memory"], f"torch.optim on {device.type}")}
    states = []
    with torch.random.fork_rng(devices=_device_rng(device)):  # the caller's generator is left as it was
        for seed in tqdm(seeds, desc="training the posterior", unit="seed", disable=not progress):
            if directory is None:
                states.append([ck["state_dict"] for ck in train_member(backend, seed, x, y, x_te, y_te, device, False)])
                continue
            inputs = {**common, "seed": seed}
            reason = _stale(Path(directory), seed, epochs, inputs, overwrite)
            if reason is None:
                continue
            if reason not in ("missing", "overwrite"):
                tqdm.write(f"retraining seed {seed}: {reason}")
            train_member(backend, seed, x, y, x_te, y_te, device, False, on_checkpoint=lambda ck, s=seed, i=inputs:
                         io.atomic_save({**ck, "provenance": i}, checkpoint_path(Path(directory), s, ck["epoch"])))
    if directory is None:
        post.states = states
        return post
    write_index(post, Path(directory))
    return dataclasses.replace(post, directory=Path(directory))


def _state_dicts(out: Any, seed: int) -> list[dict]:
    """The training function's result for one seed as CPU state dicts (a one-line error when it is something else)."""
    if isinstance(out, (nn.Module, dict)) or not isinstance(out, (list, tuple)) or not out:
        raise TDAError(f"the training function returned {type(out).__name__} for seed {seed}: it must return a "
                       "non-empty list of state dicts (or models), one per checkpoint")
    states = []
    for item in out:
        sd = item.state_dict() if isinstance(item, nn.Module) else item
        if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
            raise TDAError(f"the training function's checkpoint for seed {seed} is a {type(item).__name__}, not a "
                           "state dict (or a model)")
        states.append({k: t.detach().to("cpu", copy=True) for k, t in sd.items()})
    return states


def posterior_from(train_fn: TrainFunction, factory: Factory, seeds: Iterable[int], training: Training | None = None,
                   loss: Loss = cross_entropy, directory: Path | str | None = None, overwrite: bool = False,
                   progress: bool = True) -> Posterior:
    """The posterior of your own training loop: `train_fn(seed)` returns the state dicts (or models) of that seed's
    last checkpoints; `factory()` builds the model they load into. `training`: your loop's constants (for ATS's
    step, LOO's `continue` retraining and CG's default damping; default: the paper's)."""
    seeds = [int(s) for s in seeds]
    states, counts = [], set()
    for seed in tqdm(seeds, desc="training the posterior", unit="seed", disable=not progress):
        inputs = {"seed": seed, "train function": source_digest(train_fn), "factory": source_digest(factory)}
        if directory is not None:
            first = checkpoint_path(Path(directory), seed, 0)
            n = (io.load_tensor_file(first, "checkpoint", "delete it").get("provenance", {}).get("checkpoints", 0)
                 if first.exists() else 0)
            if n and _stale(Path(directory), seed, list(range(n)), {**inputs, "checkpoints": n}, overwrite) is None:
                counts.add(n)
                continue
        got = _state_dicts(train_fn(seed), seed)
        counts.add(len(got))
        if directory is None:
            states.append(got)
            continue
        for c, sd in enumerate(got):
            io.atomic_save({"state_dict": sd, "epoch": c, "provenance": {**inputs, "checkpoints": len(got)}},
                           checkpoint_path(Path(directory), seed, c))
    if len(counts) > 1:
        raise TDAError(f"the training function returned different numbers of checkpoints per seed "
                       f"({sorted(counts)}): every seed needs the same number")
    n = counts.pop()
    post = Posterior(factory, seeds, list(range(n)), training or Training(), False, loss,
                     states if directory is None else None)
    if directory is None:
        return post
    write_index(post, Path(directory))
    return dataclasses.replace(post, directory=Path(directory))
