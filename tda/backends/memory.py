"""A model family held in memory, for the Python API: a zero-argument model factory, a loss and the training
protocol's constants, with no experiment name and no files.

Everything the methods read from a backend works as for the paper's families: `initial` draws the seed's
initialisation and batch order exactly as the training loop does, `continuation_batches` LOO's batches, `load`
a checkpoint's weights. A posterior trained by a loop of the user's own has no initialisation or batch order
this package knows: its backend (`own_protocol=False`) refuses what needs them (LOO's `scratch` protocol).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..config import ExperimentConfig, TDAError
from ..engine.functional import Loss, cross_entropy
from .base import Backend, Batches

#: builds the model, freshly initialised from torch's global generator
Factory = Callable[[], nn.Module]


@dataclass(frozen=True)
class ProtocolConfig(ExperimentConfig):
    """The constants the methods read (learning rate, weight decay, batch size, epochs, checkpoints, LiSSA's) for a
    model held in memory: an `ExperimentConfig` without a task or files."""

    n_epochs: int = 15

    @property
    def name(self) -> str:
        return "posterior"

    @property
    def epochs(self) -> int:
        return self.n_epochs


def protocol_config(epochs: int, checkpoints: int, lr: float, weight_decay: float, batch_size: int) -> ProtocolConfig:
    """The config of a model in memory trained `epochs` epochs, its last `checkpoints` kept (the rest the paper's)."""
    return ProtocolConfig(model="memory", task="memory", num_per_class=0, n_epochs=epochs, n_ckpts=checkpoints, lr=lr,
                          weight_decay=weight_decay, batch_size=batch_size)


class MemoryBackend(Backend):
    """A user's model from `factory()`, its per-sample `loss`, trained by our protocol (`own_protocol`) or by theirs."""

    def __init__(self, cfg: ExperimentConfig, factory: Factory, loss: Loss = cross_entropy, own_protocol: bool = True):
        super().__init__(cfg)
        self.factory, self.loss, self.own_protocol = factory, loss, own_protocol
        # LOO's default: the paper's (`continue` from each checkpoint) with our protocol's batches either way
        self.loo_protocol = "paper" if own_protocol else "continue"

    def build(self) -> nn.Module:
        try:
            model = self.factory()
        except Exception as e:  # noqa: BLE001 - the user's code: any failure is one line
            raise TDAError(f"the model factory failed: {type(e).__name__}: {e}")
        if not isinstance(model, nn.Module):
            raise TDAError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        return model.train()

    def initial(self, seed: int, n_train: int) -> tuple[nn.Module, Batches]:
        if not self.own_protocol:
            raise TDAError("LOO's scratch protocol retrains from the initialisation and batch order of the training "
                           "run, which a training loop of your own does not tell: train the posterior with "
                           "tda.train_posterior, or use protocol 'continue' or 'paired'")
        return super().initial(seed, n_train)

    def describe(self) -> str:
        return "the model of the factory"

    def load_state(self, model: nn.Module, state: dict) -> None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise TDAError(f"a state dict of the posterior does not fit the factory's model "
                           f"({str(e).splitlines()[0]}): build the posterior with the same factory")
