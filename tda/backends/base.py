"""The interface of a model family (a "backend"): what training and the TDA methods need to know about it.

A backend is built for one experiment. It says how a seed's model is initialised and in which order
the training samples are visited, which parameters are trained (and attributed over), the learning-
rate schedule, how inputs are prepared, what a checkpoint holds and how one is loaded. The single
training loop (`tda.training`) and every TDA method work through this interface only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, TDAError
from ..engine.functional import Loss, cross_entropy
from ..seeds import load_seeds

Batches = list[list[torch.Tensor]]


def epoch_batches(n: int, batch_size: int, epochs: int) -> Batches:
    """Index batches per epoch, drawn exactly as `DataLoader(subset, batch_size, shuffle=True)` does.

    The loader's sampler only looks at the dataset's length, so iterating a DataLoader over
    `range(n)` consumes the global generator the same way as a DataLoader over the image subset,
    and yields the indices it would have used.
    """
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True)
    return [[b.clone() for b in loader] for _ in range(epochs)]


def as_sets(batches: Batches) -> Batches:
    """Each batch's indices in ascending order: the same batch composition, one summation order for every seed."""
    return [[b.sort().values for b in epoch] for epoch in batches]


class Backend(ABC):
    """One model family, bound to an experiment config."""

    #: dropout (e.g. LoRA's) is on while the LOO ensemble retrains; losses and gradients are always taken in eval mode
    train_mode: ClassVar[bool] = False
    #: the LOO protocol used when none is asked for
    loo_protocol: ClassVar[str] = "paper"
    #: whether the paper's own LOO for this family is our `continue` protocol (else `--protocol paper` is refused)
    paper_loo_is_continue: ClassVar[bool] = True
    #: samples per forward pass when only evaluating
    eval_chunk: ClassVar[int] = 1000
    #: the per-sample loss the family trains on and every method attributes (the paper's: cross-entropy)
    loss: Loss = staticmethod(cross_entropy)

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._skeletons: dict[str, nn.Module] = {}
        self._reference_seed: int | None = None
        self._model_type: type | None = None

    # ---- initialisation and data order
    @abstractmethod
    def build(self) -> nn.Module:
        """A freshly initialised model, in train mode; its random init is drawn from the global generator."""

    def reference_seed(self) -> int:
        """The seed a variant holds fixed for every member: the first of random_seeds.pt."""
        if self._reference_seed is None:
            self._reference_seed = load_seeds(self.cfg.root)[0]
        return self._reference_seed

    def variant_seeds(self, seed: int) -> tuple[int, int]:
        """(init seed, batch seed) of a seed: both the seed, except that `_init` fixes the batch seed and `_batch`
        the init seed to the reference seed (docs/study.md)."""
        if self.cfg.variant == "init":
            return seed, self.reference_seed()
        if self.cfg.variant == "batch":
            return self.reference_seed(), seed
        return seed, seed

    def initial(self, seed: int, n_train: int) -> tuple[nn.Module, Batches]:
        """A seed's start of training: `torch.manual_seed(seed)`, build the model, then draw every epoch's batches.

        Nothing else draws from the generator in between, so the batch order is what
        `DataLoader(subset, batch_size, shuffle=True)` yields after the seed and the model's construction.
        In a variant the model comes from the init seed, and the batches (and every later draw, e.g.
        dropout) from the generator exactly where the batch seed's own run would have it (seeded, a model
        built and discarded); each batch is then visited in index order, so that batch order, not the
        order of a sum's terms, is all that the batch seed changes.
        """
        init_seed, batch_seed = self.variant_seeds(seed)
        torch.manual_seed(init_seed)
        model = self.build()
        if batch_seed != init_seed:
            torch.manual_seed(batch_seed)
            self.build()  # consumes what the batch seed's own run drew before its batches
        batches = epoch_batches(n_train, self.cfg.batch_size, self.cfg.epochs)
        return model, as_sets(batches) if self.cfg.variant else batches

    def continuation_batches(self, seed: int, n_train: int) -> Batches:
        """Batches of the LOO protocols that continue from a checkpoint: `torch.manual_seed(seed)`, then the loader's draw.

        This is the reference's LOO: it loads the checkpoint, reseeds and iterates a fresh shuffled
        DataLoader, so no model construction happens in between and the order is not the training
        run's; it is the same for every removed sample, which is all the protocol needs. In a variant
        the batch seed is used and each batch is visited in index order, as in `initial`.
        """
        torch.manual_seed(self.variant_seeds(seed)[1])
        batches = epoch_batches(n_train, self.cfg.batch_size, self.cfg.epochs)
        return as_sets(batches) if self.cfg.variant else batches

    def lr_schedule(self, total_steps: int) -> Callable[[int], float] | None:
        """The factor on the learning rate at each optimiser step of a `total_steps` run; None: constant."""
        return None

    # ---- parameters, inputs, outputs
    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimiser updates; attributions are taken over exactly these."""
        return [p for p in model.parameters() if p.requires_grad]

    def inputs(self, subset: dict, split: str) -> torch.Tensor:
        """Model inputs of a subset {'images', 'labels', 'indices'}; `split` is 'train' or 'test'."""
        return subset["images"]

    # ---- checkpoints
    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores, on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def checkpoint_meta(self) -> dict:
        """Extra entries every checkpoint of this family records."""
        return {}

    def provenance(self) -> dict:
        """What, besides the data, constants and seed, a checkpoint depends on (in a variant, also its reference seed)."""
        facts = {"family": type(self).__name__}
        return {**facts, "reference seed": self.reference_seed()} if self.cfg.variant else facts

    def model_type(self) -> type:
        """The class of this family's model (what decides whether the CNN kernels compute it), built once under a
        forked generator when a family does not name it."""
        if self._model_type is None:
            with torch.random.fork_rng(devices=[]):
                self._model_type = type(self.build())
        return self._model_type

    def describe(self) -> str:
        """The model family in an error message."""
        return f"the {self.cfg.model} model"

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy a checkpoint's tensors into a model of this family (a one-line TDAError when they do not fit)."""
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            cfg = self.cfg
            raise TDAError(f"checkpoint of {cfg.name} does not fit {self.describe()} ({str(e).splitlines()[0]}): "
                           f"retrain with `python {cfg.train_script} --experiment {cfg.name} --seed_id <id> "
                           "--overwrite`")

    def load(self, ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
        """The model with a checkpoint's weights, in eval mode.

        One model per device is built once (under a forked generator, so loading draws nothing from
        the global one) and each checkpoint only overwrites its tensors: a method must be done with
        one checkpoint's model before it loads the next.
        """
        key = str(device)
        if key not in self._skeletons:
            with torch.random.fork_rng(devices=[]):
                self._skeletons[key] = self.build().to(device)
        model = self._skeletons[key]
        self.load_state(model, ckpt["state_dict"])
        return model.eval()
