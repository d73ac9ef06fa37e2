"""A model family of the user's own: any `nn.Module` constructor, trained and attributed like the paper's CNNs.

The constructor is registered by name in <root>/models.json as `module:function` and is called as
`function(in_channels, image_size, num_classes)`; experiments `<name>_<task>_<n>pc` then train from
scratch with the reference protocol (`run_cnn_training.py`, or a training script of the user's own that the
entry names) and every TDA method attributes over all parameters that require a gradient. Register one with
`python -m tda.backends.custom --model NAME --model_factory module:function [--train_script FILE]`
(docs/own_data.md).
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import io, provenance
from ..cli import parser, run
from ..config import (DEFAULT_TRAIN_SCRIPT, MODELS, MODELS_FILE, ExperimentConfig, TDAError, USER_NAME, repo_root,
                      user_model_entries, user_models)
from .base import Backend

Factory = Callable[[int, int, int], nn.Module]


def resolve_factory(spec: str, root: Path | None = None) -> Factory:
    """The function named by `module:function`; the root directory is importable, so a module may sit beside models.json."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise TDAError(f"bad model factory {spec!r}: expected module:function, e.g. mymodels:make_mlp")
    for where in (str(Path(root or repo_root()).resolve()), str(Path.cwd())):
        if where not in sys.path:
            sys.path.append(where)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module: any failure is one line
        raise TDAError(f"cannot import module {module!r} of model factory {spec!r} ({type(e).__name__}: {e}): put "
                       f"{module.replace('.', '/')}.py beside {MODELS_FILE} or on PYTHONPATH")
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise TDAError(f"module {module!r} has no function {name!r} (model factory {spec!r})")
    return fn


def source_digest(fn: Factory) -> str | None:
    """Digest of the file that defines the factory (None when it has none), so editing the model retrains."""
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return provenance.file_digest(Path(path)) if path else None


def build_checked(fn: Factory, spec: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Call the factory; a failure or a result that is not an `nn.Module` is a one-line error."""
    try:
        model = fn(in_channels, image_size, num_classes)
    except Exception as e:  # noqa: BLE001 - the user's code
        raise TDAError(f"model factory {spec} failed for (in_channels={in_channels}, image_size={image_size}, "
                       f"num_classes={num_classes}): {type(e).__name__}: {e}")
    if not isinstance(model, nn.Module):
        raise TDAError(f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class CustomBackend(Backend):
    """A user's `nn.Module` from `factory(in_channels, image_size, num_classes)`, trained from scratch like the CNNs."""

    def __init__(self, cfg: ExperimentConfig, factory: str | None = None):
        super().__init__(cfg)
        registered = user_models(cfg.root)
        if factory is None and cfg.model not in registered:
            raise TDAError(f"model {cfg.model!r} is not registered in {cfg.root / MODELS_FILE}: run `python -m "
                           f"tda.backends.custom --model {cfg.model} --model_factory module:function`")
        self.factory = factory or registered[cfg.model]
        self._fn: Factory | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fn": None}  # worker processes import the factory themselves

    @property
    def fn(self) -> Factory:
        if self._fn is None:
            self._fn = resolve_factory(self.factory, self.cfg.root)
        return self._fn

    def build(self) -> nn.Module:
        spec = self.cfg.spec
        return build_checked(self.fn, self.factory, spec.channels, spec.image_size, self.cfg.num_labels).train()

    def describe(self) -> str:
        return f"the model of {self.factory}"

    def checkpoint_meta(self) -> dict:
        return {"model_factory": self.factory}

    def provenance(self) -> dict:
        return {**super().provenance(), "factory": self.factory, "factory source": source_digest(self.fn)}


def check_factory(spec: str, root: Path, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> str:
    """Build the model once and run a forward pass on zeros; returns a one-line description of it."""
    model = build_checked(resolve_factory(spec, root), spec, in_channels, image_size, num_classes).eval()
    x = torch.zeros(2, in_channels, image_size, image_size)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - the user's code
        raise TDAError(f"model of {spec} fails on inputs [2, {in_channels}, {image_size}, {image_size}]: "
                       f"{type(e).__name__}: {e}")
    out = getattr(out, "logits", out)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TDAError(f"model of {spec} returns {got} on 2 inputs, expected logits of shape (2, {num_classes})")
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{type(model).__name__} with {n:,} trainable parameters"


def register(name: str, spec: str, root: Path | None = None, train_script: str | None = None) -> tuple[Path, str]:
    """Check the factory on grey 28x28 and colour 32x32 inputs, add `name` to <root>/models.json; (path, model).

    train_script: the family's own training entry point (a file, relative to the root or absolute), recorded
    with the factory so that both launchers train the family with it.
    """
    import json
    root = Path(root or repo_root())
    if not USER_NAME.match(name) or name in MODELS:
        raise TDAError(f"bad model name {name!r}: use lowercase letters and digits, not {', '.join(MODELS)}")
    what = check_factory(spec, root, 1, 28)
    check_factory(spec, root, 3, 32)
    if train_script is not None and not (Path(train_script) if Path(train_script).is_absolute()
                                         else root / train_script).is_file():
        raise TDAError(f"--train_script {train_script}: no such file (relative paths are taken from {root})")
    entry = spec if train_script is None else {"factory": spec, "train_script": train_script}
    models = {k: v if set(v) != {"factory"} else v["factory"] for k, v in user_model_entries(root).items()}
    path = root / MODELS_FILE
    io.atomic_write_text(json.dumps({**models, name: entry}, indent=1, sort_keys=True) + "\n", path)
    return path, what


def main(argv: list[str] | None = None) -> None:
    """Register a model family: `python -m tda.backends.custom --model NAME --model_factory module:function`."""
    p = parser("Register a model family of your own; experiments <model>_<task>_<n>pc then use it.")
    p.prog = "python -m tda.backends.custom"
    p.add_argument("--model", required=True,
                   help="the name experiments use, lowercase letters and digits (e.g. mymlp)")
    p.add_argument("--model_factory", required=True,
                   help="module:function; called as function(in_channels, image_size, num_classes) -> nn.Module")
    p.add_argument("--train_script", default=None,
                   help="a training script of your own for this family (relative to $TDA_ROOT, or absolute); both "
                        "launchers then train it with that script (default: run_cnn_training.py)")
    args = p.parse_args(argv)
    path, what = register(args.model, args.model_factory, train_script=args.train_script)
    script = args.train_script or DEFAULT_TRAIN_SCRIPT
    print(f"registered model {args.model!r} = {args.model_factory} ({what} on 1x28x28) in {path}; "
          f"train it with `python {script} --experiment {args.model}_<task>_<n>pc --seed_id all`")


if __name__ == "__main__":
    run(main)
