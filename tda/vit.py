"""The pretrained ViT on disk: loading it offline, its image preprocessing, and a tiny local ViT to try things.

The ViT-LoRA model family itself (model, LoRA, checkpoints) is `tda.backends.vit`.

    python -m tda.vit --make_tiny DIR     # a tiny random ViT saved with save_pretrained, for offline runs
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from . import io
from .config import DEFAULT_VIT, ExperimentConfig, TDAError
from .ranges import POSITIVE_INT, ranged

MODEL_ENV = "TDA_VIT_MODEL"
DEFAULT_MEAN_STD = (0.5, 0.5)  # ViTImageProcessor's defaults, used when a model has no preprocessor config
_PREPROCESS_VERSION = "v1-bilinear-antialias"  # part of the cache key: change it when preprocess() changes


def default_model_name_or_path() -> str:
    """$TDA_VIT_MODEL when set (how run_experiment.sh passes a local model), else DEFAULT_VIT."""
    return os.environ.get(MODEL_ENV) or DEFAULT_VIT


def recorded_name(name_or_path: str) -> str:
    """What checkpoints record: an absolute path for a local directory, the id for a hub model."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.is_dir() else str(name_or_path)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (the new head is expected to be missing)."""
    from transformers.utils import logging as hf_logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(what: str, name_or_path: str, fn, *args, **kwargs):
    """Call a transformers `from_pretrained`; an unreachable hub id or bad directory becomes a one-line TDAError."""
    try:
        with quiet_transformers():
            return fn(name_or_path, *args, **kwargs)
    except (OSError, ValueError, KeyError) as e:  # offline hub, missing files, unknown model type
        local = Path(name_or_path).expanduser().is_dir()
        hint = ("is not a loadable ViT directory" if local else
                "is not a local directory and cannot be fetched from the Hugging Face hub (offline?)")
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TDAError(f"cannot load the {what} of {name_or_path!r}: it {hint} ({reason}); pass "
                       f"--model_name_or_path DIR or set {MODEL_ENV}=DIR with a directory made by "
                       f"`save_pretrained` (e.g. `python -m tda.vit --make_tiny DIR`)") from None


# ---------------------------------------------------------------- preprocessing
def vit_config(name_or_path: str):
    """The pretrained model's config; a one-line error when it cannot be loaded or is not a ViT."""
    from transformers import AutoConfig
    config = load_pretrained("config", name_or_path, AutoConfig.from_pretrained)
    if getattr(config, "model_type", None) != "vit":
        raise TDAError(f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} model, not a ViT")
    return config


def image_settings(name_or_path: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image size, per-channel mean, per-channel std) the pretrained model expects."""
    from transformers import AutoImageProcessor
    config = vit_config(name_or_path)
    size = config.image_size if isinstance(config.image_size, int) else int(config.image_size[0])
    try:
        with quiet_transformers():
            proc = AutoImageProcessor.from_pretrained(name_or_path)
        mean, std = tuple(map(float, proc.image_mean)), tuple(map(float, proc.image_std))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # no preprocessor config: ViT defaults
        mean, std = (DEFAULT_MEAN_STD[0],) * 3, (DEFAULT_MEAN_STD[1],) * 3
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return size, mean, std


def preprocess(task: str, images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Subset images (the task's transform) -> ViT inputs [N, 3, size, size]; deterministic, no random crop."""
    x = images.float()
    if task == "cifar10":  # undo the task's mean-0.5/std-0.5 normalisation: back to [0, 1]
        x = x * 0.5 + 0.5
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def _cache_path(cfg: ExperimentConfig, size: int, mean, std, split: str) -> Path:
    # keyed by what the pixels depend on (size, mean, std), not by model name: models that agree share it
    key = hashlib.sha1(f"{_PREPROCESS_VERSION}|{list(mean)}|{list(std)}".encode()).hexdigest()[:10]
    return cfg.data_dir / f"vit_{size}_{key}_{split}.pt"


def processed_subset(cfg: ExperimentConfig, subset: dict, split: str, size: int, mean, std) -> dict:
    """One subset as ViT inputs {'images', 'labels', 'indices'}, cached under data/<task>/vit_*.pt (split names the file)."""
    path = _cache_path(cfg, size, mean, std, split)
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if (torch.equal(cached["indices"], subset["indices"]) and torch.equal(cached["labels"], subset["labels"])
                    and tuple(cached["images"].shape) == (len(subset["labels"]), 3, size, size)):
                return cached
        except Exception:  # noqa: BLE001 - a corrupt or stale cache is simply rebuilt
            pass
    out = {"images": preprocess(cfg.task, subset["images"], size, mean, std),
           "labels": subset["labels"].clone(), "indices": subset["indices"].clone()}
    io.atomic_save(out, path)
    return out


def processed_subsets(cfg: ExperimentConfig, name_or_path: str) -> tuple[dict, dict]:
    """Train and test subsets as ViT inputs {'images','labels','indices'}, cached under data/<task>/vit_*.pt."""
    train, test = io.load_subsets(cfg)
    size, mean, std = image_settings(name_or_path)
    return (processed_subset(cfg, train, f"train_{cfg.num_per_class}pc", size, mean, std),
            processed_subset(cfg, test, "test", size, mean, std))


# ---------------------------------------------------------------- a tiny local ViT
def make_tiny(path: str | Path, num_layers: int = 2, hidden_size: int = 32, image_size: int = 32,
              patch_size: int = 8, intermediate_size: int = 64, num_heads: int = 2, seed: int = 0) -> Path:
    """Save a tiny random ViT backbone (no head, like the in21k checkpoint) + image processor with save_pretrained."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    path = Path(path)
    config = ViTConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=intermediate_size, image_size=image_size, patch_size=patch_size)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        ViTModel(config).save_pretrained(path)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tda.vit", description=__doc__.splitlines()[0])
    p.add_argument("--make_tiny", metavar="DIR", required=True,
                   help="write a tiny random ViT (2 layers, hidden 32, image 32, patch 8) to DIR")
    p.add_argument("--layers", type=ranged(int, POSITIVE_INT), default=2,
                   help="encoder layers of the tiny ViT (default: %(default)s)")
    args = p.parse_args(argv)
    path = make_tiny(args.make_tiny, num_layers=args.layers)
    print(f"wrote a tiny ViT to {path}/: try it with {MODEL_ENV}={path} bash run_experiment.sh vit_digits3_10pc")


if __name__ == "__main__":
    from . import cli
    cli.run(_main)
