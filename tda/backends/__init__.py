"""Model families ("backends"), keyed by the model part of an experiment name.

`REGISTRY` holds the built-in families (the same names as `config.MODELS`); families of the user's own are
registered in <root>/models.json (`config.user_models`) and served by `CustomBackend`, which is imported on
first use: `python -m tda.backends.custom` then runs that module fresh, not a second copy of an imported one.
"""
from __future__ import annotations

from ..config import MODELS, TRAIN_SCRIPTS, ExperimentConfig, TDAError, model_names, user_models
from .base import Backend, Batches, epoch_batches
from .cnn import CNNBackend
from .vit import ViTBackend

REGISTRY: dict[str, type[Backend]] = {"cnn": CNNBackend, "cnn3l": CNNBackend, "vit": ViTBackend}
assert set(REGISTRY) == set(MODELS), "config.MODELS and the backend registry must list the same model names"
assert set(TRAIN_SCRIPTS) <= set(REGISTRY), "config.TRAIN_SCRIPTS names a model family the registry does not have"


def get_backend(cfg: ExperimentConfig, **options) -> Backend:
    """The backend of an experiment's model family; `options` go to its constructor (e.g. name_or_path for the ViT)."""
    if cfg.model in REGISTRY:
        return REGISTRY[cfg.model](cfg, **options)
    if cfg.model in user_models(cfg.root):
        from .custom import CustomBackend
        return CustomBackend(cfg, **options)
    raise TDAError(f"no backend for model {cfg.model!r}: choose one of {', '.join(model_names(cfg.root))}, or register "
                   f"your own with `python -m tda.backends.custom --model {cfg.model} --model_factory module:function`")


__all__ = ["Backend", "Batches", "CNNBackend", "CustomBackend", "ViTBackend", "REGISTRY", "epoch_batches",
           "get_backend"]


def __getattr__(name: str):
    """`CustomBackend`, imported when first asked for."""
    if name == "CustomBackend":
        from .custom import CustomBackend
        return CustomBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
