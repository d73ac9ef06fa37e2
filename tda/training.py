"""The one training loop of every model family (the reference protocol), and training an ensemble of seeds.

Per seed: `torch.manual_seed(seed)`, build the model, draw every epoch's batch order, then Adam
(lr, L2 weight decay added to the gradient) on the mean cross-entropy of each batch, with the
backend's learning-rate schedule; the checkpoints after each of the last `n_ckpts` epochs are kept.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import io
from .backends import Backend, get_backend
from .config import ExperimentConfig
from .methods.functional import output_logits
from .workers import raise_failed_rows, run_jobs


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    """Top-1 accuracy in eval mode (no dropout)."""
    model.eval()
    correct = sum(int((output_logits(model(x[i:i + chunk])).argmax(1) == y[i:i + chunk]).sum())
                  for i in range(0, len(x), chunk))
    return correct / max(len(x), 1)


def train_member(backend: Backend, seed: int, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, device: str | torch.device = "cpu", progress: bool = True,
                 on_checkpoint: Callable[[dict], None] | None = None) -> list[dict]:
    """Train one ensemble member; returns its checkpoints {'state_dict', 'epoch', 'train_loss', 'test_accuracy', ...}."""
    cfg, device = backend.cfg, torch.device(device)
    model, batches = backend.initial(seed, len(y))
    model.to(device)
    opt = torch.optim.Adam(backend.trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = sum(len(b) for b in batches)
    factor = backend.lr_schedule(total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor) if factor is not None else None
    x, y, x_test, y_test = x.to(device), y.to(device), x_test.to(device), y_test.to(device)
    ckpts = []
    bar = tqdm(total=total_steps, desc=f"{cfg.name} seed {seed}", disable=not progress, leave=False, unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for idx in batches[epoch]:
            idx = idx.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(output_logits(model(x[idx])), y[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
        if epoch in cfg.ckpt_epochs:
            ck = {"state_dict": backend.checkpoint_state(model), "epoch": epoch, "train_loss": total / len(y),
                  "test_accuracy": accuracy(model, x_test, y_test, backend.eval_chunk), **backend.checkpoint_meta()}
            ckpts.append(ck)
            bar.set_postfix(epoch=epoch, loss=f"{ck['train_loss']:.3f}", acc=f"{ck['test_accuracy']:.3f}")
            if on_checkpoint is not None:
                on_checkpoint(ck)
    bar.close()
    return ckpts


def _row(seed: int, ckpt: dict, skipped: bool) -> dict:
    return {"seed": seed, "skipped": skipped, "test_accuracy": ckpt["test_accuracy"],
            "checkpoint": {k: v for k, v in ckpt.items() if k != "state_dict"}}


def train_seed(backend: Backend, seed: int, data: tuple, device: str | torch.device = "cpu",
               progress: bool = True) -> dict:
    """Train one seed on prepared (x, y, x_test, y_test) and save its checkpoints atomically; returns its row."""
    cfg = backend.cfg
    ckpts = train_member(backend, seed, *data, device=device, progress=progress,
                         on_checkpoint=lambda ck: io.atomic_save(ck, cfg.ckpt_path(seed, ck["epoch"])))
    return _row(seed, ckpts[-1], skipped=False)


def _prepared(backend: Backend) -> tuple:
    train, test = io.load_subsets(backend.cfg)
    return backend.inputs(train, "train"), train["labels"], backend.inputs(test, "test"), test["labels"]


def _train_job(backend: Backend, seed: int, device: str) -> dict:
    """One seed in a worker process."""
    return train_seed(backend, seed, _prepared(backend), device, progress=False)


def train_seeds(cfg: ExperimentConfig, seeds: list[int], device: str | torch.device = "cpu", overwrite: bool = False,
                backend: Backend | None = None, progress: bool = True, workers: int = 1,
                strict: bool = True) -> list[dict]:
    """Train and save each seed's checkpoints, skipping finished seeds unless `overwrite`; `workers` seeds at a time.

    Returns one row per seed: {'seed', 'skipped', 'test_accuracy' (last checkpoint), 'checkpoint' (its other
    entries), 'error'}. A seed that fails does not stop the others; afterwards, with `strict`, one TDAError
    names the failed seeds.
    """
    device = torch.device(device)
    backend = backend or get_backend(cfg)
    io.load_subsets(cfg)  # a one-line error naming the subset script when they are missing
    rows: dict[int, dict] = {}
    todo = []
    for seed in seeds:
        if overwrite or not io.seed_finished(cfg, seed):
            todo.append(seed)
        else:
            rows[seed] = _row(seed, io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1]), skipped=True)
    if todo:
        # inputs prepared before the first seed, so a bad input is one error, not one per seed
        data = _prepared(backend)
        if workers > 1 and len(todo) > 1:
            jobs, fn = [(f"seed {s}", (backend, s, str(device))) for s in todo], _train_job
        else:
            jobs = [(f"seed {s}", (s,)) for s in todo]
            fn = lambda s: train_seed(backend, s, data, device, progress)  # noqa: E731
        for seed, o in zip(todo, run_jobs(fn, jobs, workers, device, f"training {cfg.name}", progress)):
            rows[seed] = o.value if o.error is None else {"seed": seed, "skipped": False, "error": o.error}
    out = [{"error": None, **rows[s]} for s in seeds]
    if strict:
        raise_failed_rows(out)
    return out
