"""Attribution scores over a posterior, [seeds, checkpoints, N, M]: any registered method on any model and per-sample
loss (the same code the scripts run, through `Method.score_seed`), or a method of your own given as a callable
`(model, train, test) -> [N, M]`, run at every posterior sample and stacked."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..cli import resolve_device
from ..config import TDAError
from ..engine.functional import Loss
from ..methods import LOO, REGISTRY, Method, SeedData, outputs
from .data import Data, as_tensors
from .posterior import Posterior

#: a method of your own: (model in eval mode, train, test as you passed them) -> scores [N, M] (tensor or array)
OwnMethod = Callable[[nn.Module, Any, Any], Any]


def resolve_method(method: str | Method, options: dict) -> tuple[Method, str | None]:
    """The method to run and the output asked for: an output name ('loo', 'ats', 'if', 'gd', 'gc', ...) gives that
    output, a method name ('gd_gc') or a `Method` instance all of its outputs (None)."""
    if isinstance(method, type) and issubclass(method, Method):
        method = method(**options)
        options = {}
    if isinstance(method, Method):
        if options:
            raise TDAError(f"options {', '.join(options)}: give them to the {type(method).__name__} you pass, or pass "
                           "the method by name")
        return method, None
    cls = outputs().get(method) or REGISTRY.get(method)
    if cls is None:
        raise TDAError(f"unknown TDA method {method!r}: choose one of {', '.join([*outputs(), *REGISTRY])}, or pass a "
                       "callable (model, train, test) -> scores [N, M]")
    try:
        made = cls(**options)
    except TypeError as e:
        raise TDAError(f"method {method!r}: {e}; its options are {', '.join(cls.__dataclass_fields__)}") from None
    return made, method if method in cls.outputs else None


def _check_loo(method: Method, post: Posterior) -> None:
    """LOO's protocols on a posterior of your own training loop: `continue` and `paired` only (one line otherwise)."""
    if isinstance(method, LOO) and not post.own_protocol and method.protocol in ("paper", "scratch"):
        raise TDAError(f"LOO protocol {method.protocol!r} needs a posterior trained by our protocol "
                       "(tda.train_posterior); for a training loop of your own use protocol 'continue' (retrain from "
                       "each checkpoint with the posterior's Training constants) or 'paired'")


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def own_scores(fn: OwnMethod, post: Posterior, train: Any, test: Any, device: torch.device,
               progress: bool = True) -> torch.Tensor:
    """`fn(model, train, test)` at every sample of the posterior, stacked to [seeds, checkpoints, N, M]."""
    backend, out = post.backend(), []
    for i, seed in enumerate(tqdm(post.seeds, desc="your method over the posterior", unit="seed",
                                  disable=not progress)):
        row = []
        for ck in post.checkpoints(i):
            s = fn(backend.load(ck, device), train, test)
            s = torch.as_tensor(np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s))
            if s.ndim != 2 or (row and s.shape != row[0].shape) or (out and s.shape != out[0].shape[1:]):
                raise TDAError(f"your method returned scores of shape {tuple(s.shape)} at seed {seed}: it must return "
                               "[N, M] (train x test), the same shape at every checkpoint")
            row.append(s)
        out.append(torch.stack(row))
    return torch.stack(out)


def attribute(method: str | Method | OwnMethod, posterior: Posterior, train: Data, test: Data, *,
              loss: Loss | None = None, device: str | torch.device | None = None, progress: bool = True,
              **options) -> torch.Tensor | dict[str, torch.Tensor]:
    """Scores tau [seeds, checkpoints, N, M] of training sample j for test sample i at every posterior sample.

    method: an output name ('loo', 'ats', 'if', 'gd', 'gc' or one you registered) with its options as keywords
    (e.g. solver='cg', protocol='paired'), a method name or `Method` with several outputs (a dict of them), or a
    callable (model, train, test) -> [N, M]. loss: per-sample (outputs, targets) -> [B], default the posterior's.
    The paper's CNN with cross-entropy runs on the CPU kernels; anything else on torch.func, on CUDA when present.
    """
    device = resolve_device(device or "auto") if not isinstance(device, torch.device) else device
    if callable(method) and not isinstance(method, (str, Method)) and not (isinstance(method, type)
                                                                          and issubclass(method, Method)):
        if options or loss is not None:
            raise TDAError("a method of your own takes no options or loss here: bind them in the callable")
        with torch.random.fork_rng(devices=_rng_devices(device)):
            return own_scores(method, posterior, train, test, device, progress)
    m, output = resolve_method(method, options)
    _check_loo(m, posterior)
    (x_tr, y_tr), (x_te, y_te) = as_tensors(train, "train"), as_tensors(test, "test")
    backend = posterior.backend(loss)
    x_tr, y_tr, x_te, y_te = (t.to(device) for t in (x_tr, y_tr, x_te, y_te))
    per_seed = []
    with torch.random.fork_rng(devices=_rng_devices(device)):  # LOO reseeds: the caller's generator is kept
        for i, seed in enumerate(tqdm(posterior.seeds, desc=f"{m.name} over the posterior", unit="seed",
                                      disable=not progress)):
            data = SeedData(backend.cfg, seed, device, backend, x_tr, y_tr, x_te, y_te, torch.arange(len(y_tr)),
                            torch.arange(len(y_te)), posterior.checkpoints(i), progress)
            scores, _ = m.score_seed(data)
            per_seed.append({o: s.detach().cpu() for o, s in scores.items()})
    out = {o: torch.stack([s[o] for s in per_seed]) for o in m.outputs}
    if output is not None or len(out) == 1:
        return out[output or next(iter(out))]
    return out
