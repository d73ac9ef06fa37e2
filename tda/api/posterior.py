"""The posterior the significance test needs, in memory or on disk: per seed, the state dicts of its last checkpoints,
and the factory that builds the model they belong to.

On disk a posterior is a directory laid out as the scripts lay out a model family's checkpoints:
`<dir>/<seed>/epoch_<e>.pt`, each {'state_dict', 'epoch', ...}, plus `<dir>/posterior.json` (seeds, epochs,
the training constants, whether our protocol trained it). `Posterior.load` also reads a directory the scripts
wrote (e.g. models/cnn/digits3_10pc), which has no posterior.json.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import io
from ..backends.memory import Factory, MemoryBackend, ProtocolConfig, protocol_config
from ..config import TDAError
from ..engine.functional import Loss, cross_entropy
from ..ranges import POSITIVE, POSITIVE_INT, NON_NEGATIVE

INDEX = "posterior.json"
_CKPT = re.compile(r"^epoch_(\d+)\.pt$")


@dataclass(frozen=True)
class Training:
    """The training protocol's constants, the paper's by default: Adam(lr) with L2 weight decay on batches of
    `batch_size`, for `epochs` epochs, keeping the checkpoints after the last `checkpoints` epochs. For a posterior
    trained by a loop of your own, state the constants of that loop: ATS's step, LOO's retraining and CG's default
    damping use them."""

    epochs: int = 15
    checkpoints: int = 5
    lr: float = 1e-3
    weight_decay: float = 5e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name, rng in (("epochs", POSITIVE_INT), ("checkpoints", POSITIVE_INT), ("lr", POSITIVE),
                          ("weight_decay", NON_NEGATIVE), ("batch_size", POSITIVE_INT)):
            rng.check(f"Training {name}", getattr(self, name))
        if self.checkpoints > self.epochs:
            raise TDAError(f"Training checkpoints ({self.checkpoints}) must be at most epochs ({self.epochs})")

    def config(self) -> ProtocolConfig:
        """The constants as the methods read them."""
        return protocol_config(self.epochs, self.checkpoints, self.lr, self.weight_decay, self.batch_size)


@dataclass
class Posterior:
    """Samples of the posterior: `seeds` x the checkpoints after `epochs`, held in `states` ([seed][checkpoint]
    state dicts) or in `directory`. `own_protocol`: trained by `train_posterior` (LOO may then retrain from the
    initialisation). `loss`: the loss it was trained on, the default of `attribute`."""

    factory: Factory
    seeds: list[int]
    epochs: list[int]
    training: Training = field(default_factory=Training)
    own_protocol: bool = False
    loss: Loss = cross_entropy
    states: list[list[dict]] | None = None
    directory: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(seeds, checkpoints)."""
        return len(self.seeds), len(self.epochs)

    def backend(self, loss: Loss | None = None) -> MemoryBackend:
        """The model family the methods compute through, with `loss` (default: the posterior's own)."""
        return MemoryBackend(self.training.config(), self.factory, loss or self.loss, self.own_protocol)

    def checkpoints(self, i: int) -> list[dict]:
        """Seed i's checkpoints [{'state_dict', 'epoch'}] in epoch order (read from disk when stored there)."""
        if self.states is not None:
            return [{"state_dict": sd, "epoch": e} for sd, e in zip(self.states[i], self.epochs)]
        fix = "train the posterior again, or load the directory it was saved to"
        return [io.load_tensor_file(checkpoint_path(self.directory, self.seeds[i], e), "checkpoint", fix)
                for e in self.epochs]

    def model(self, i: int, c: int = -1, device: torch.device | str = "cpu") -> nn.Module:
        """A new model with the weights of seed i's checkpoint c, in eval mode."""
        with torch.random.fork_rng(devices=[]):  # building draws nothing from the caller's generator
            model = self.backend().build().to(device)
        model.load_state_dict(self.checkpoints(i)[c]["state_dict"])
        return model.eval()

    def save(self, directory: Path | str) -> "Posterior":
        """Write every checkpoint and posterior.json under `directory` (atomically); returns the posterior on disk."""
        directory = Path(directory)
        for i, seed in enumerate(self.seeds):
            for ck in self.checkpoints(i):
                io.atomic_save({"state_dict": ck["state_dict"], "epoch": ck["epoch"]},
                               checkpoint_path(directory, seed, ck["epoch"]))
        write_index(self, directory)
        return dataclasses.replace(self, states=None, directory=directory)

    @classmethod
    def load(cls, directory: Path | str, factory: Factory, loss: Loss = cross_entropy, seeds: list[int] | None = None,
             training: Training | None = None, own_protocol: bool | None = None) -> "Posterior":
        """The posterior saved in `directory` (by `save`, `train_posterior` or the training scripts), read on use.

        Without posterior.json, every seed directory is taken (or `seeds`, in that order), with the
        checkpoints of the first; `training` and `own_protocol` then default to the paper's and False."""
        directory = Path(directory)
        index = read_index(directory)
        seeds = seeds or index.get("seeds") or sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
        if not seeds:
            raise TDAError(f"no posterior in {directory}: expected <seed>/epoch_<e>.pt files (or {INDEX})")
        epochs = index.get("epochs") or sorted(int(m[1]) for p in (directory / str(seeds[0])).glob("*.pt")
                                               if (m := _CKPT.match(p.name)))
        if not epochs:
            raise TDAError(f"no checkpoints in {directory / str(seeds[0])}: expected epoch_<e>.pt files")
        training = training or (Training(**index["training"]) if "training" in index else Training())
        own = index.get("own_protocol", False) if own_protocol is None else own_protocol
        return cls(factory, list(seeds), list(epochs), training, own, loss, None, directory)


def checkpoint_path(directory: Path, seed: int, epoch: int) -> Path:
    """Where a saved posterior keeps one checkpoint: `<dir>/<seed>/epoch_<e>.pt`, the scripts' layout."""
    return Path(directory) / str(seed) / f"epoch_{epoch}.pt"


def write_index(post: Posterior, directory: Path) -> None:
    """posterior.json: seeds, epochs, training constants, own protocol."""
    index = {"seeds": post.seeds, "epochs": post.epochs, "training": dataclasses.asdict(post.training),
             "own_protocol": post.own_protocol}
    io.atomic_write_text(json.dumps(index, indent=1) + "\n", Path(directory) / INDEX)


def read_index(directory: Path) -> dict:
    """posterior.json of a directory ({} when there is none); a one-line error when it is unreadable."""
    path = Path(directory) / INDEX
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TDAError(f"cannot read {path} ({type(e).__name__}: {e}): delete the directory and save it again")
