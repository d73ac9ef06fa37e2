"""The one training loop of every model family (the reference protocol), and training an ensemble of seeds.

Per seed: `torch.manual_seed(seed)`, build the model, draw every epoch's batch order, then Adam
(lr, L2 weight decay added to the gradient) on the mean loss of each batch (the backend's: cross-entropy for
every built-in family), with the backend's learning-rate schedule; the checkpoints after each of the last
`n_ckpts` epochs are kept.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import io, provenance
from .backends import Backend, get_backend
from .config import ExperimentConfig
from .engine.functional import batch_loss, cross_entropy, output_logits
from .locking import claim, lock_path
from .workers import raise_failed_rows, run_per_seed


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    """Top-1 accuracy in eval mode (no dropout)."""
    model.eval()
    correct = sum(int((output_logits(model(x[i:i + chunk])).argmax(1) == y[i:i + chunk]).sum())
                  for i in range(0, len(x), chunk))
    return correct / max(len(x), 1)


@torch.no_grad()
def test_metric(backend: Backend, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """{'test_accuracy': top-1} for cross-entropy, else {'test_loss': the mean loss}, in eval mode."""
    if backend.loss is cross_entropy:
        return {"test_accuracy": accuracy(model, x, y, backend.eval_chunk)}
    model.eval()
    c = backend.eval_chunk
    total = sum(float(backend.loss(output_logits(model(x[i:i + c])), y[i:i + c]).sum()) for i in range(0, len(x), c))
    return {"test_loss": total / max(len(x), 1)}


def train_member(backend: Backend, seed: int, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, device: str | torch.device = "cpu", progress: bool = True,
                 on_checkpoint: Callable[[dict], None] | None = None) -> list[dict]:
    """Train one ensemble member; returns its checkpoints {'state_dict', 'epoch', 'train_loss', 'test_accuracy'
    (cross-entropy) or 'test_loss' (any other loss), ...}."""
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
            loss = batch_loss(output_logits(model(x[idx])), y[idx], backend.loss)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
        if epoch in cfg.ckpt_epochs:
            ck = {"state_dict": backend.checkpoint_state(model), "epoch": epoch, "train_loss": total / len(y),
                  **test_metric(backend, model, x_test, y_test), **backend.checkpoint_meta()}
            ckpts.append(ck)
            shown = {"acc": ck["test_accuracy"]} if "test_accuracy" in ck else {"test_loss": ck["test_loss"]}
            bar.set_postfix(epoch=epoch, loss=f"{ck['train_loss']:.3f}", **{k: f"{v:.3f}" for k, v in shown.items()})
            if on_checkpoint is not None:
                on_checkpoint(ck)
    bar.close()
    return ckpts


def training_code(backend: Backend, device: torch.device | str) -> dict:
    """The code checkpoints come from: this training loop and the model family's module (with all they import)."""
    return provenance.code_facts(["tda.training", type(backend).__module__], f"torch.optim on {torch.device(device).type}")


def _row(seed: int, ckpt: dict, skipped: bool) -> dict:
    return {"seed": seed, "skipped": skipped, "test_accuracy": ckpt["test_accuracy"],
            "checkpoint": {k: v for k, v in ckpt.items() if k not in ("state_dict", "provenance")}}


def checkpoints_stale(cfg: ExperimentConfig, seed: int, inputs: dict) -> str | None:
    """None when all of a seed's checkpoints exist and were trained from `inputs`, else why not ('missing', ...)."""
    for e in cfg.ckpt_epochs:
        if not cfg.ckpt_path(seed, e).exists():
            return "missing"
        reason = provenance.changed(io.load_checkpoint(cfg, seed, e).get("provenance"), inputs)
        if reason is not None:
            return reason
    return None


def train_seed(backend: Backend, seed: int, data: tuple, device: str | torch.device = "cpu",
               progress: bool = True, inputs: dict | None = None) -> dict:
    """Train one seed on prepared (x, y, x_test, y_test) and save its checkpoints atomically; returns its row.

    `inputs`: the provenance recorded in every checkpoint (what it was computed from).
    """
    cfg = backend.cfg
    ckpts = train_member(backend, seed, *data, device=device, progress=progress, on_checkpoint=lambda ck: io.atomic_save(
        {**ck, "provenance": inputs or {}}, cfg.ckpt_path(seed, ck["epoch"])))
    return _row(seed, ckpts[-1], skipped=False)


def _prepared(backend: Backend) -> tuple:
    train, test = io.load_subsets(backend.cfg)
    return backend.inputs(train, "train"), train["labels"], backend.inputs(test, "test"), test["labels"]


def attempt_seed(backend: Backend, seed: int, data: tuple | None, device: str | torch.device, progress: bool,
                 overwrite: bool, inputs: dict, wait: bool) -> dict | None:
    """Train a seed under its claim unless it is current (another process may just have trained it)."""
    cfg = backend.cfg
    with claim(lock_path(cfg.model_dir, str(seed)), wait) as got:
        if not got:
            return None
        reason = "--overwrite" if overwrite else checkpoints_stale(cfg, seed, inputs)
        if reason is None:
            return _row(seed, io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1]), skipped=True)
        if reason not in ("missing", "--overwrite"):
            tqdm.write(f"retraining {cfg.name} seed {seed}: {reason}")
        return train_seed(backend, seed, data if data is not None else _prepared(backend), device, progress, inputs)


def _train_job(backend: Backend, seed: int, device: str, overwrite: bool, inputs: dict) -> dict:
    """One seed in a worker process: prepares its own inputs, waits for its claim."""
    return attempt_seed(backend, seed, None, device, False, overwrite, inputs, wait=True)


def train_seeds(cfg: ExperimentConfig, seeds: list[int], device: str | torch.device = "cpu", overwrite: bool = False,
                backend: Backend | None = None, progress: bool = True, workers: int = 1,
                strict: bool = True) -> list[dict]:
    """Train and save each seed's checkpoints unless they are current (or with `overwrite`); `workers` seeds at a time.

    A seed is current when all its checkpoints exist and record the inputs they would be trained from
    now (subsets, constants, seed, model family). Returns one row per seed: {'seed', 'skipped',
    'test_accuracy' (last checkpoint), 'checkpoint' (its other entries), 'error'}. A seed that fails
    does not stop the others; afterwards, with `strict`, one TDAError names the failed seeds.
    """
    device = torch.device(device)
    backend = backend or get_backend(cfg)
    io.load_subsets(cfg)  # a one-line error naming the subset script when they are missing
    for seed in seeds:
        io.sweep(cfg.seed_dir(seed))  # temp files of a killed run
    subsets = provenance.subset_inputs(cfg)
    code = training_code(backend, device)
    inputs = {s: provenance.checkpoint_inputs(cfg, s, backend.provenance(), subsets, code) for s in seeds}
    data: list = []

    def is_done(seed: int) -> dict | None:
        if overwrite or checkpoints_stale(cfg, seed, inputs[seed]) is not None:
            if not data:  # inputs prepared before the first seed: a bad input is one error, not one per seed
                data.append(_prepared(backend))
            return None
        return _row(seed, io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1]), skipped=True)

    rows = run_per_seed(
        seeds, is_done, lambda s, wait: attempt_seed(backend, s, data[0], device, progress, overwrite, inputs[s], wait),
        (_train_job, lambda s: (backend, s, str(device), overwrite, inputs[s])), workers, device,
        f"training {cfg.name}", progress)
    if strict:
        raise_failed_rows(rows)
    return rows
