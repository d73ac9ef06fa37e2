"""dattri's TRAK and TracIn as methods of this pipeline: one attribution per checkpoint, stored and tested like ours.

An optional extra (`pip install -r req-extra.txt`). The methods are not registered: they run only through
`run_dattri.py`, with the per-seed driver of `tda.attribution` (seeds in parallel, provenance, skipping).

TRAK (Park et al., 2023) at one checkpoint, as dattri computes it:

    tau[i, j] = phi_j^T (Phi^T Phi + lambda I)^-1 phi_i * (1 - p_i)

phi = R^T grad f / sqrt(P): the gradient of the model output f over the P parameters, randomly projected
to `proj_dim` dimensions (R Gaussian, seeded, divided by sqrt(proj_dim)); Phi stacks the N training rows;
p_i the probability of training sample i's label. f is TRAK's margin log(p / (1 - p)), as in its paper.
Phi^T Phi is proj_dim x proj_dim of rank at most N: singular when proj_dim >= N, and then the scores
are float round-off unless lambda > 0. Hence the default proj_dim is N // 2 (at most 512) and lambda = 0,
TRAK's own choice; `ridge` sets lambda as a fraction of the projected kernel's expected mean eigenvalue.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .config import TDAError
from .engine.functional import output_logits
from .ranges import NON_NEGATIVE, POSITIVE_INT
from .methods.base import Checkpoint, Method, SeedData, option

#: dattri's projection dimension for TracIn, and the cap of TRAK's default
MAX_PROJ_DIM = 512
BATCH = 64


def dattri_version() -> str:
    """dattri's version, or a one-line error saying how to install it."""
    try:
        from importlib.metadata import version
        import dattri  # noqa: F401
        return version("dattri")
    except ImportError:
        raise TDAError("dattri is not installed: `pip install -r req-extra.txt` (it is an optional extra)")


def default_proj_dim(n_train: int) -> int:
    """TRAK's default projection: half the training set (so Phi^T Phi has full rank with room), at most 512."""
    return max(1, min(MAX_PROJ_DIM, n_train // 2))


def check_trak(proj_dim: int, ridge: float, n_train: int) -> None:
    """A one-line error for a TRAK configuration whose kernel Phi^T Phi + lambda I is singular (the options' own
    ranges are checked where they are parsed)."""
    if proj_dim >= n_train and ridge == 0:
        raise TDAError(f"--proj_dim {proj_dim} >= {n_train} training samples with --ridge 0: TRAK's kernel "
                       f"Phi^T Phi ({proj_dim} x {proj_dim}, rank <= {n_train}) is singular and its scores would be "
                       f"float round-off; use --proj_dim below {n_train} (default {default_proj_dim(n_train)}) "
                       "or a --ridge > 0")


def margin(model: nn.Module) -> Callable:
    """TRAK's model output f(params, (x, y)) = log(p_y / (1 - p_y)) = z_y - logsumexp(z_other), stable for p_y -> 1."""
    def f(params, sample):
        image, label = sample
        z = output_logits(functional_call(model, params, image.unsqueeze(0)))[0]
        is_label = torch.arange(z.shape[-1], device=z.device) == label
        return (z * is_label).sum() - torch.logsumexp(z.masked_fill(is_label, float("-inf")), 0)
    return f


def cross_entropy(model: nn.Module) -> Callable:
    """The training loss of one sample, f(params, (x, y))."""
    def f(params, sample):
        image, label = sample
        return F.cross_entropy(output_logits(functional_call(model, params, image.unsqueeze(0))), label.unsqueeze(0))
    return f


def _silence_dattri_bars() -> None:
    from dattri.algorithm import tracin, trak
    for module in (tracin, trak):  # one progress bar per batch and checkpoint: silenced
        if hasattr(module, "tqdm"):
            module.tqdm = functools.partial(tqdm, disable=True)


def _loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _task(model: nn.Module, loss: Callable, load: Callable):
    from dattri.task import AttributionTask
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return AttributionTask(loss_func=loss, model=model, checkpoints=state, checkpoints_load_func=load)


def _projection(proj_dim: int, proj_seed: int, device: torch.device) -> dict:
    return {"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": proj_seed, "device": str(device)}


def ridge_lambda(task, x_train: torch.Tensor, y_train: torch.Tensor, ridge: float, proj_dim: int) -> float:
    """lambda = ridge x E[tr(Phi^T Phi)] / proj_dim = ridge x sum_i |grad f(z_i)|^2 / (P proj_dim), f as dattri's."""
    if ridge == 0:
        return 0.0
    params, _ = task.get_param(ckpt_idx=0)
    grad_f = task.get_grad_loss_func(in_dims=(None, 0))
    total = sum(float(grad_f(params, batch).detach().double().pow(2).sum()) for batch in _loader(x_train, y_train))
    return ridge * total / (params.numel() * proj_dim)


def trak_scores(model: nn.Module, load: Callable, x_train, y_train, x_test, y_test, proj_dim: int, ridge: float,
                proj_seed: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """dattri's single-model TRAK [N, M] at the checkpoint loaded in `model`, and the lambda it used."""
    from dattri.algorithm.trak import TRAKAttributor
    _silence_dattri_bars()
    ce = cross_entropy(model)

    def correct_probability(params, sample):
        return torch.exp(-ce(params, sample))

    task = _task(model, margin(model), load)
    lam = ridge_lambda(task, x_train, y_train, ridge, proj_dim)
    attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability,
                                projector_kwargs=_projection(proj_dim, proj_seed, device), device=str(device),
                                regularization=lam)
    attributor.cache(_loader(x_train, y_train))
    return attributor.attribute(_loader(x_test, y_test)).detach().cpu(), lam


def tracin_scores(model: nn.Module, load: Callable, x_train, y_train, x_test, y_test, lr: float, proj_dim: int,
                  proj_seed: int, device: torch.device) -> torch.Tensor:
    """dattri's TracIn [N, M] at the checkpoint loaded in `model`: lr x projected g_i . g_j of the loss."""
    from dattri.algorithm.tracin import TracInAttributor
    _silence_dattri_bars()
    attributor = TracInAttributor(task=_task(model, cross_entropy(model), load), weight_list=torch.tensor([lr]),
                                  normalized_grad=False, projector_kwargs=_projection(proj_dim, proj_seed, device),
                                  device=str(device))
    return attributor.attribute(_loader(x_train, y_train), _loader(x_test, y_test)).detach().cpu()


@dataclass
class DattriMethod(Method):
    """dattri's attribution at each checkpoint, through the per-seed driver (not registered: run_dattri.py runs it)."""

    proj_dim: int = option(MAX_PROJ_DIM, "dimension of dattri's random Gaussian gradient projection", int,
                           range=POSITIVE_INT)
    proj_seed: int = option(0, "seed of the projection (the same for every seed and checkpoint)", int)
    key_options: ClassVar[tuple[str, ...]] = ("proj_dim", "proj_seed")

    def key_settings(self, backend) -> dict:
        return {"dattri": dattri_version(), **super().key_settings(backend)}

    def settings(self, data: SeedData) -> dict:
        return {**super().settings(data), "dattri": dattri_version()}

    def _load(self, data: SeedData) -> Callable:
        def load(model, state):
            data.backend.load_state(model, state)
            return model.eval()
        return load


@dataclass
class DattriTRAK(DattriMethod):
    """dattri's single-model TRAK at each checkpoint, with TRAK's margin and the (1 - p) weighting."""

    name: ClassVar[str] = "dattri_trak"
    outputs: ClassVar[dict[str, str]] = {"dattri_trak": "DATTRI_TRAK"}
    ridge: float = option(0.0, "lambda of (Phi^T Phi + lambda I), as a fraction of the kernel's mean eigenvalue",
                          float, range=NON_NEGATIVE)
    key_options: ClassVar[tuple[str, ...]] = ("proj_dim", "proj_seed", "ridge", "output")
    output: ClassVar[str] = "margin"

    def key_settings(self, backend) -> dict:
        return {**super().key_settings(backend), "output": self.output}

    def score_seed(self, data: SeedData) -> tuple[dict, dict]:
        check_trak(self.proj_dim, self.ridge, data.n_train)
        per_ckpt, lams = [], []
        for ck in data.each_checkpoint(self.name):
            s, lam = trak_scores(ck.model, self._load(data), data.x_train, data.y_train, data.x_test, data.y_test,
                                 self.proj_dim, self.ridge, self.proj_seed, data.device)
            per_ckpt.append(s)
            lams.append(lam)
        return {self.name: torch.stack(per_ckpt)}, {"output": self.output, "ridge_lambda": lams}


@dataclass
class DattriTracIn(DattriMethod):
    """dattri's TracIn at each checkpoint, weighted by the learning rate: lr x Grad-Dot up to the projection."""

    name: ClassVar[str] = "dattri_tracin"
    outputs: ClassVar[dict[str, str]] = {"dattri_tracin": "DATTRI_TRACIN"}

    def score(self, ck: Checkpoint) -> dict:
        d = ck.data
        return {self.name: tracin_scores(ck.model, self._load(d), d.x_train, d.y_train, d.x_test, d.y_test,
                                         d.cfg.lr, self.proj_dim, self.proj_seed, d.device)}


METHODS: dict[str, type[DattriMethod]] = {"trak": DattriTRAK, "tracin": DattriTracIn}
