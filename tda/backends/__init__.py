"""Model families ("backends"), keyed by the model part of an experiment name."""
from __future__ import annotations

from ..config import MODELS, ExperimentConfig, TDAError
from .base import Backend, Batches, epoch_batches
from .cnn import CNNBackend
from .vit import ViTBackend

REGISTRY: dict[str, type[Backend]] = {"cnn": CNNBackend, "cnn3l": CNNBackend, "vit": ViTBackend}
assert set(REGISTRY) == set(MODELS), "config.MODELS and the backend registry must list the same model names"


def get_backend(cfg: ExperimentConfig, **options) -> Backend:
    """The backend of an experiment's model family; `options` go to its constructor (e.g. name_or_path for the ViT)."""
    if cfg.model not in REGISTRY:
        raise TDAError(f"no backend for model {cfg.model!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[cfg.model](cfg, **options)


__all__ = ["Backend", "Batches", "CNNBackend", "ViTBackend", "REGISTRY", "epoch_batches", "get_backend"]
