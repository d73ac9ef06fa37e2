"""The interface every TDA method implements, and the per-seed data the driver hands it.

A method is a dataclass whose fields are its options (each made with `option`, which also gives it
a command-line flag). It names the score files it writes (`outputs`) and computes, for one
checkpoint, a score matrix [n_train, n_test] per output (`score`). Methods that need a whole seed
at once (LOO's scratch protocol trains from the initialisation) override `score_seed` instead.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backends import Backend
from ..config import ExperimentConfig, TDAError
from ..engine.ensemble import use_vmap
from ..engine.functional import Loss, Params, split_params
from ..ranges import Range


def option(default: Any, help: str, type: type | None = None, choices: list | tuple | None = None,  # noqa: A002
           range: Range | None = None):  # noqa: A002
    """A method option: a dataclass field that is also the command-line flag `--<name>`; a numeric option declares
    its `range`, checked when the flag is parsed and when the method is made in Python."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices, "range": range})


@dataclass
class SeedData:
    """One seed's inputs on the compute device, and its checkpoints (read on first use)."""

    cfg: ExperimentConfig
    seed: int
    device: torch.device
    backend: Backend
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_indices: torch.Tensor
    test_indices: torch.Tensor
    checkpoints: list[dict]
    progress: bool = True

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def loss(self) -> Loss:
        """The per-sample loss attributed: the model family's (cross-entropy unless it says otherwise)."""
        return self.backend.loss

    def model_at(self, ckpt: dict) -> tuple[nn.Module, Params, Params]:
        """(model in eval mode, trainable params, frozen tensors) at a checkpoint."""
        model = self.backend.load(ckpt, self.device)
        params, frozen = split_params(model)
        return model, params, frozen

    def each_checkpoint(self, what: str) -> Iterator["Checkpoint"]:
        """Every checkpoint in epoch order, loaded in turn, under a progress bar."""
        for ck in tqdm(self.checkpoints, desc=f"{what} seed {self.seed}", unit="ckpt", leave=False,
                       disable=not self.progress):
            model, params, frozen = self.model_at(ck)
            yield Checkpoint(self, int(ck["epoch"]), model, params, frozen)


@dataclass
class Checkpoint:
    """One checkpoint of a seed: its model in eval mode, trainable params and frozen tensors, and the seed's data."""

    data: SeedData
    epoch: int
    model: nn.Module
    params: Params
    frozen: Params

    def tensors(self) -> tuple:
        """(model, params, frozen, x_train, y_train, x_test, y_test): the arguments of the pure method functions."""
        d = self.data
        return self.model, self.params, self.frozen, d.x_train, d.y_train, d.x_test, d.y_test


Scores = dict[str, torch.Tensor]

#: every registered method by name, in registration order (the order of tables and figures)
REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator that makes a method known to the driver, the entry scripts and the results step."""
    if not cls.name or not cls.outputs:
        raise ValueError(f"{cls.__name__} must set `name` and `outputs` before it is registered")
    taken = {o for m in REGISTRY.values() if m is not cls for o in m.outputs}
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls or taken & set(cls.outputs):
        raise ValueError(f"{cls.__name__}: the name {cls.name!r} or one of its outputs is already registered")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class Method:
    """A TDA method. Subclasses set the class attributes, declare options with `option`, and implement `score`."""

    #: registry key, the value of `run_tda.py --method`
    name: ClassVar[str] = ""
    #: score file name -> label in tables; one method may write several (Grad-Dot and Grad-Cos)
    outputs: ClassVar[dict[str, str]] = {}
    #: the entry script that runs it (any registered method also runs with `run_tda.py --method <name>`)
    script: ClassVar[str] = "run_tda.py"
    #: +1 if a positive score means "the training sample helps the test sample", -1 if negative
    sign: ClassVar[int] = 1
    #: options that change the scores (not e.g. chunk sizes): a score file computed with others is recomputed
    key_options: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        """Every option within its declared range and choices (a one-line TDAError otherwise)."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("range") is not None:
                meta["range"].check(f"{type(self).__name__} option {f.name}", value)
            if meta.get("choices") is not None and value is not None and value not in meta["choices"]:
                raise TDAError(f"{type(self).__name__} option {f.name} must be one of "
                               f"{', '.join(map(str, meta['choices']))}, got {value!r}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per option, with its default (unless its help explains it), range and help."""
        for f in dataclasses.fields(cls):
            meta = f.metadata
            shown = f.default is None or "default" in meta.get("help", "")
            kw = {"default": f.default, "help": meta.get("help", "") + ("" if shown else " (default: %(default)s)")}
            if meta.get("type") is not None:
                kw["type"] = meta["type"] if meta.get("range") is None else meta["range"].parser(meta["type"])
                if meta.get("range") is not None:
                    kw["help"] += f" ({meta['range'].describe()})"
            if meta.get("choices") is not None:
                kw["choices"] = meta["choices"]
            parser.add_argument(f"--{f.name}", **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Method":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def command(cls, experiment: str) -> str:
        """The shell command that computes this method's scores for every seed."""
        method = "" if cls.script != "run_tda.py" else f" --method {cls.name}"
        return f"python {cls.script}{method} --experiment {experiment} --seed_id all"

    def options(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self, data: SeedData) -> dict:
        """What is recorded beside the scores: the run's facts, the options, and the method's constants."""
        return {"seed": data.seed, "device": str(data.device), "dtype": str(data.x_train.dtype).removeprefix("torch."),
                "n_train": data.n_train, "n_test": len(data.y_test), "model": data.cfg.model,
                "members_vmapped": use_vmap(data.device, None), **self.options()}

    def key_settings(self, backend: Backend) -> dict:
        """The options that change the scores, defaults resolved for the backend (part of the scores' provenance)."""
        return {k: getattr(self, k) for k in self.key_options}

    def note(self, settings: dict) -> str:
        """A remark printed after a seed is computed (e.g. a solver that did not converge)."""
        return ""

    def score(self, ck: Checkpoint) -> Scores:
        """Scores [n_train, n_test] per output at one checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score nor score_seed")

    def score_seed(self, data: SeedData) -> tuple[Scores, dict]:
        """Scores [n_ckpts, n_train, n_test] per output for one seed, and facts to add to its settings."""
        per_ckpt = [self.score(ck) for ck in data.each_checkpoint(self.name)]
        return {o: torch.stack([s[o] for s in per_ckpt]) for o in self.outputs}, {}
