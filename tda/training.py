"""CNN ensemble training, the reference protocol (DESIGN section 4)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import io
from .config import ExperimentConfig
from .models import build_cnn


def epoch_batches(n: int, batch_size: int, epochs: int) -> list[list[torch.Tensor]]:
    """Index batches per epoch, drawn exactly as `DataLoader(subset, batch_size, shuffle=True)` does.

    The loader's sampler only looks at the dataset's length, so iterating a DataLoader over
    `range(n)` consumes the global generator the same way as the reference's DataLoader over
    its image subset, and yields the indices it would have used.
    """
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True)
    return [[b.clone() for b in loader] for _ in range(epochs)]


def seeded_init(cfg: ExperimentConfig, seed: int, n_train: int) -> tuple[nn.Module, list[list[torch.Tensor]]]:
    """`torch.manual_seed(seed)`, build the model, then draw every epoch's batch order (DESIGN 4)."""
    torch.manual_seed(seed)
    model = build_cnn(cfg)
    return model, epoch_batches(n_train, cfg.batch_size, cfg.epochs)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return correct / max(len(x), 1)


def train_cnn(cfg: ExperimentConfig, seed: int, train: dict, test: dict,
              device: str | torch.device = "cpu", progress: bool = True, on_checkpoint=None) -> list[dict]:
    """Train one ensemble member; returns the checkpoints {'state_dict','epoch','train_loss','test_accuracy'}."""
    device = torch.device(device)
    model, batches = seeded_init(cfg, seed, len(train["labels"]))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = train["images"].to(device), train["labels"].to(device)
    xt, yt = test["images"].to(device), test["labels"].to(device)
    ckpts = []
    bar = tqdm(range(cfg.epochs), desc=f"{cfg.name} seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total = 0.0
        for idx in batches[epoch]:
            idx = idx.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch in cfg.ckpt_epochs:
            ck = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                  "epoch": epoch, "train_loss": total / len(y), "test_accuracy": accuracy(model, xt, yt)}
            ckpts.append(ck)
            bar.set_postfix(loss=f"{ck['train_loss']:.3f}", acc=f"{ck['test_accuracy']:.3f}")
            if on_checkpoint is not None:
                on_checkpoint(ck)
    return ckpts


def train_seeds(cfg: ExperimentConfig, seeds: list[int], device: str = "cpu", overwrite: bool = False) -> list[dict]:
    """Train and save the checkpoints of each seed, skipping finished seeds unless `overwrite`.

    Returns one summary row per seed: {'seed', 'skipped', 'test_accuracy' (last checkpoint)}.
    """
    train, test = io.load_subsets(cfg)
    rows = []
    for seed in tqdm(seeds, desc=f"training {cfg.name}", unit="seed"):
        if io.seed_finished(cfg, seed) and not overwrite:
            rows.append({"seed": seed, "skipped": True,
                         "test_accuracy": io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1])["test_accuracy"]})
            continue
        ckpts = train_cnn(cfg, seed, train, test, device,
                          on_checkpoint=lambda ck: io.atomic_save(ck, cfg.ckpt_path(seed, ck["epoch"])))
        rows.append({"seed": seed, "skipped": False, "test_accuracy": ckpts[-1]["test_accuracy"]})
    return rows
