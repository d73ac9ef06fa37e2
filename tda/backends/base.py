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

from ..config import ExperimentConfig

Batches = list[list[torch.Tensor]]


def epoch_batches(n: int, batch_size: int, epochs: int) -> Batches:
    """Index batches per epoch, drawn exactly as `DataLoader(subset, batch_size, shuffle=True)` does.

    The loader's sampler only looks at the dataset's length, so iterating a DataLoader over
    `range(n)` consumes the global generator the same way as a DataLoader over the image subset,
    and yields the indices it would have used.
    """
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True)
    return [[b.clone() for b in loader] for _ in range(epochs)]


class Backend(ABC):
    """One model family, bound to an experiment config."""

    #: dropout (e.g. LoRA's) is on while the LOO ensemble retrains; losses and gradients are always taken in eval mode
    train_mode: ClassVar[bool] = False
    #: the LOO protocol used when none is asked for
    loo_protocol: ClassVar[str] = "paper"
    #: samples per forward pass when only evaluating
    eval_chunk: ClassVar[int] = 1000

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._skeletons: dict[str, nn.Module] = {}

    # ---- initialisation and data order
    @abstractmethod
    def build(self) -> nn.Module:
        """A freshly initialised model, in train mode; its random init is drawn from the global generator."""

    def initial(self, seed: int, n_train: int) -> tuple[nn.Module, Batches]:
        """A seed's start of training: `torch.manual_seed(seed)`, build the model, then draw every epoch's batches.

        Nothing else draws from the generator in between, so the batch order is what
        `DataLoader(subset, batch_size, shuffle=True)` yields after the seed and the model's construction.
        """
        torch.manual_seed(seed)
        model = self.build()
        return model, epoch_batches(n_train, self.cfg.batch_size, self.cfg.epochs)

    def continuation_batches(self, seed: int, n_train: int) -> Batches:
        """Batches of the LOO protocols that continue from a checkpoint: `torch.manual_seed(seed)`, then the loader's draw.

        This is the reference's LOO: it loads the checkpoint, reseeds and iterates a fresh shuffled
        DataLoader, so no model construction happens in between and the order is not the training
        run's; it is the same for every removed sample, which is all the protocol needs.
        """
        torch.manual_seed(seed)
        return epoch_batches(n_train, self.cfg.batch_size, self.cfg.epochs)

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
        """What, besides the data, constants and seed, a checkpoint of this family depends on."""
        return {"family": type(self).__name__}

    @abstractmethod
    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy a checkpoint's tensors into a model of this family (a one-line TDAError when they do not fit)."""

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
