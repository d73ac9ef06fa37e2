"""ViT-B/16 + LoRA: model building, input preprocessing, the fine-tuning ensemble and checkpoint reload (DESIGN 4).

The network is `ViTForImageClassification` with a new 10-way head and PEFT LoRA on the attention's
query and value projections. Only the LoRA matrices and the head are trainable; checkpoints hold
exactly those tensors, named as in `model.named_parameters()`, so they are the `params` of
`tda.methods.common.split_params` and the TDA methods work on them unchanged.

Attention is forced to the eager implementation: the SDPA kernel has no vmap batching rule
(torch.func falls back to a slow per-sample loop) and no forward-mode AD (jvp), which the
Hessian-vector products of IF need; eager attention is plain matmul + softmax, so per-sample
gradients and HVPs through the PEFT model work (DESIGN 5). Training uses the same function.

    python -m tda.vit --make_tiny DIR     # a tiny local ViT to try the pipeline offline
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import io
from .config import DEFAULT_VIT, ExperimentConfig, TDAError
from .methods.common import Params, split_params
from .training import epoch_batches

MODEL_ENV = "TDA_VIT_MODEL"
DEFAULT_MEAN_STD = (0.5, 0.5)  # ViTImageProcessor's defaults, used when a model has no preprocessor config
# transformers 5 renamed ViT's attention projections query/key/value -> q_proj/k_proj/v_proj;
# DESIGN 4 (and the paper) name the old modules, so map them when the model has only the new ones.
_RENAMED = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
_PREPROCESS_VERSION = "v1-bilinear-antialias"  # part of the cache key: change it when preprocess() changes


def default_model_name_or_path() -> str:
    """$TDA_VIT_MODEL when set (how run_experiment.sh passes a local model), else DEFAULT_VIT."""
    return os.environ.get(MODEL_ENV) or DEFAULT_VIT


def _record(name_or_path: str) -> str:
    """What checkpoints record: an absolute path for a local directory, the id for a hub model."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.is_dir() else str(name_or_path)


@contextlib.contextmanager
def _quiet_transformers():
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


def _load(what: str, name_or_path: str, fn, *args, **kwargs):
    """Call a transformers `from_pretrained`; an unreachable hub id or bad directory becomes a one-line TDAError."""
    try:
        with _quiet_transformers():
            return fn(name_or_path, *args, **kwargs)
    except (OSError, ValueError, KeyError) as e:  # offline hub, missing files, unknown model type
        local = Path(name_or_path).expanduser().is_dir()
        hint = ("is not a loadable ViT directory" if local else
                "is not a local directory and cannot be fetched from the Hugging Face hub (offline?)")
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TDAError(f"cannot load the {what} of {name_or_path!r}: it {hint} ({reason}); pass "
                       f"--model_name_or_path DIR or set {MODEL_ENV}=DIR with a directory made by "
                       f"`save_pretrained` (e.g. `python -m tda.vit --make_tiny DIR`)") from None


# ---------------------------------------------------------------- preprocessing (DESIGN 4)
def vit_config(name_or_path: str):
    """The pretrained model's config; a one-line error when it cannot be loaded or is not a ViT."""
    from transformers import AutoConfig
    config = _load("config", name_or_path, AutoConfig.from_pretrained)
    if getattr(config, "model_type", None) != "vit":
        raise TDAError(f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} model, not a ViT")
    return config


def image_settings(name_or_path: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image size, per-channel mean, per-channel std) the pretrained model expects."""
    from transformers import AutoImageProcessor
    config = vit_config(name_or_path)
    size = config.image_size if isinstance(config.image_size, int) else int(config.image_size[0])
    try:
        with _quiet_transformers():
            proc = AutoImageProcessor.from_pretrained(name_or_path)
        mean, std = tuple(map(float, proc.image_mean)), tuple(map(float, proc.image_std))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # no preprocessor config: ViT defaults
        mean, std = (DEFAULT_MEAN_STD[0],) * 3, (DEFAULT_MEAN_STD[1],) * 3
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return size, mean, std


def preprocess(task: str, images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Subset images (DESIGN 3 transform) -> ViT inputs [N, 3, size, size]; deterministic, no random crop."""
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


def _processed(cfg: ExperimentConfig, subset: dict, split: str, size: int, mean, std) -> dict:
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
    return (_processed(cfg, train, f"train_{cfg.num_per_class}pc", size, mean, std),
            _processed(cfg, test, "test", size, mean, std))


# ---------------------------------------------------------------- model (DESIGN 4)
def lora_target_modules(model: nn.Module, targets) -> list[str]:
    """The module names LoRA wraps: the config's names, or their transformers-5 renames."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    out = []
    for t in targets:
        if t in leaves:
            out.append(t)
        elif _RENAMED.get(t) in leaves:
            out.append(_RENAMED[t])
        else:
            raise TDAError(f"the model has no module {t!r} to put LoRA on (nor {_RENAMED.get(t, t)!r})")
    return out


def build_model(cfg: ExperimentConfig, name_or_path: str) -> nn.Module:
    """Pretrained ViT + new 10-way head + LoRA; draws the head's and LoRA's init from the global generator."""
    from peft import LoraConfig, get_peft_model
    from transformers import ViTForImageClassification
    vit_config(name_or_path)  # one-line errors for a bad id/directory or a non-ViT model
    base = _load("weights", name_or_path, ViTForImageClassification.from_pretrained,
                 num_labels=cfg.num_labels, ignore_mismatched_sizes=True, attn_implementation="eager")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=lora_target_modules(base, cfg.lora_targets))
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; harmless
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, lora)
    # The head is trained by marking it trainable rather than via modules_to_save, which would add a
    # frozen duplicate; the trainable tensors are then exactly LoRA A/B and classifier weight/bias.
    for p in model.base_model.model.classifier.parameters():
        p.requires_grad_(True)
    return model


def trainable_state(model: nn.Module) -> Params:
    """The trainable tensors (LoRA matrices + head) on the CPU, named as in `named_parameters()`."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: Params) -> None:
    """Copy a checkpoint's trainable tensors into a model built by `build_model` (names must match exactly)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != names:
        extra, missing = sorted(set(state) - names)[:2], sorted(names - set(state))[:2]
        raise TDAError(f"checkpoint does not match the ViT-LoRA model (unexpected {extra}, missing {missing}): "
                       f"it was made with other LoRA settings or another model; retrain with --overwrite")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device, p.dtype))


def seeded_init(cfg: ExperimentConfig, seed: int, n_train: int, name_or_path: str) -> tuple[nn.Module, list]:
    """`torch.manual_seed(seed)`, build the model (head + LoRA init), then draw every epoch's batch order.

    The batch orders are drawn up front, as `DataLoader(shuffle=True)` would draw them with nothing
    in between: LoRA dropout draws from the same generator during training and would otherwise
    shift every later epoch's shuffle (DESIGN 4).
    """
    torch.manual_seed(seed)
    model = build_model(cfg, name_or_path)
    return model, epoch_batches(n_train, cfg.batch_size, cfg.epochs)


def decay_factor(step: int, total_steps: int) -> float:
    """Linear decay to 0 over all steps, no warm-up: the learning-rate factor of the `step`-th (0-based) step."""
    return max(0.0, 1.0 - step / total_steps)


def linear_decay(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The fine-tuning LR schedule (DESIGN 4) as a torch scheduler, stepped after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: decay_factor(step, total_steps))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> float:
    """Top-1 accuracy in eval mode (no LoRA dropout)."""
    model.eval()
    dev = next(model.parameters()).device
    correct = sum(int((model(x[i:i + chunk].to(dev)).logits.argmax(1) == y[i:i + chunk].to(dev)).sum())
                  for i in range(0, len(x), chunk))
    return correct / max(len(x), 1)


def train_vit(cfg: ExperimentConfig, seed: int, train: dict, test: dict, name_or_path: str,
              device: str | torch.device = "cpu", progress: bool = True, on_checkpoint=None) -> list[dict]:
    """Fine-tune one ensemble member; returns the checkpoints {'state_dict' (trainable only), 'epoch', ...}."""
    device = torch.device(device)
    model, batches = seeded_init(cfg, seed, len(train["labels"]), name_or_path)
    model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = sum(len(b) for b in batches)
    sched = linear_decay(opt, total_steps)
    x, y = train["images"].to(device), train["labels"].to(device)
    recorded = _record(name_or_path)
    ckpts = []
    bar = tqdm(total=total_steps, desc=f"{cfg.name} seed {seed}", disable=not progress, leave=False, unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for idx in batches[epoch]:
            idx = idx.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]).logits, y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
        if epoch in cfg.ckpt_epochs:
            ck = {"state_dict": trainable_state(model), "epoch": epoch, "train_loss": total / len(y),
                  "test_accuracy": accuracy(model, test["images"], test["labels"]),
                  "model_name_or_path": recorded}
            ckpts.append(ck)
            bar.set_postfix(epoch=epoch, loss=f"{ck['train_loss']:.3f}", acc=f"{ck['test_accuracy']:.3f}")
            if on_checkpoint is not None:
                on_checkpoint(ck)
    bar.close()
    return ckpts


def finetune_seeds(cfg: ExperimentConfig, seeds: list[int], name_or_path: str | None = None,
                   device: str | torch.device = "cpu", overwrite: bool = False) -> list[dict]:
    """Fine-tune and save each seed's checkpoints, skipping finished seeds unless `overwrite`.

    Returns one row per seed: {'seed', 'skipped', 'test_accuracy' (last checkpoint), 'model_name_or_path'}.
    """
    if cfg.model != "vit":
        raise TDAError(f"{cfg.name} is not a ViT experiment: use {cfg.train_script}")
    name_or_path = name_or_path or default_model_name_or_path()
    todo = [s for s in seeds if overwrite or not io.seed_finished(cfg, s)]
    if todo:
        train, test = processed_subsets(cfg, name_or_path)
    else:
        io.load_subsets(cfg)  # still say which script to run first when the data is gone
    rows = []
    for seed in tqdm(seeds, desc=f"fine-tuning {cfg.name}", unit="seed"):
        if seed not in todo:
            ck = io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1])
            rows.append({"seed": seed, "skipped": True, "test_accuracy": ck["test_accuracy"],
                         "model_name_or_path": ck.get("model_name_or_path", "?")})
            continue
        ckpts = train_vit(cfg, seed, train, test, name_or_path, device,
                          on_checkpoint=lambda ck: io.atomic_save(ck, cfg.ckpt_path(seed, ck["epoch"])))
        rows.append({"seed": seed, "skipped": False, "test_accuracy": ckpts[-1]["test_accuracy"],
                     "model_name_or_path": ckpts[-1]["model_name_or_path"]})
    return rows


# ---------------------------------------------------------------- hooks of the TDA driver (DESIGN 5)
def checkpoint_model_path(ckpt: dict) -> str:
    """The pretrained model a checkpoint was fine-tuned from (so the TDA scripts need no flag)."""
    if "model_name_or_path" not in ckpt:
        raise TDAError("ViT checkpoint records no model_name_or_path: retrain it with run_vit_finetuning.py --overwrite")
    return str(ckpt["model_name_or_path"])


def model_at(cfg: ExperimentConfig, ckpt: dict, device: str | torch.device = "cpu") -> tuple[nn.Module, Params, Params]:
    """(model in eval mode, trainable params, frozen params + buffers) of one checkpoint, on `device`.

    The global generator is left untouched: building the model draws a throw-away head and LoRA init.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, checkpoint_model_path(ckpt))
    load_trainable(model, ckpt["state_dict"])
    model.to(device).eval()
    params, frozen = split_params(model)
    return model, params, frozen


def tda_inputs(cfg: ExperimentConfig, ckpt: dict) -> tuple[dict, dict]:
    """The processed train and test subsets matching the model a checkpoint was fine-tuned from."""
    return processed_subsets(cfg, checkpoint_model_path(ckpt))


def recorded_model_path(cfg: ExperimentConfig) -> str:
    """The one pretrained model all fine-tuned seeds of an experiment record (their checkpoints' last epoch)."""
    fix = f"run `python run_vit_finetuning.py --experiment {cfg.name} --seed_id all` first"
    ckpts = sorted(cfg.model_dir.glob(f"*/epoch_{cfg.ckpt_epochs[-1]}.pt"))
    if not ckpts:
        raise TDAError(f"no fine-tuned checkpoints under {cfg.model_dir}: {fix}")
    paths = {checkpoint_model_path(io.load_tensor_file(p, "checkpoint", fix)) for p in ckpts}
    if len(paths) > 1:
        raise TDAError(f"the seeds of {cfg.name} were fine-tuned from different models ({', '.join(sorted(paths))}): "
                       f"refit them from one with run_vit_finetuning.py --overwrite")
    return paths.pop()


def attribution_backend(cfg: ExperimentConfig):
    """The `tda.attribution.Backend` of ViT experiments: trainable LoRA + head params, processed inputs,
    LoRA dropout and the linear LR decay during LOO retraining, LOO protocol `scratch` (DESIGN 5)."""
    from .attribution import Backend
    resolved: dict[str, tuple] = {}

    def inputs(cfg: ExperimentConfig, subset: dict) -> torch.Tensor:
        if "image" not in resolved:  # on first use: a run whose seeds are all done needs no checkpoint
            resolved["image"] = image_settings(recorded_model_path(cfg))
        size, mean, std = resolved["image"]
        train, test = io.load_subsets(cfg)
        for split, ref in ((f"train_{cfg.num_per_class}pc", train), ("test", test)):
            if torch.equal(subset["indices"], ref["indices"]):
                return _processed(cfg, subset, split, size, mean, std)["images"]
        return preprocess(cfg.task, subset["images"], size, mean, std)

    def from_checkpoint(cfg: ExperimentConfig, ckpt: dict, device: torch.device) -> nn.Module:
        return model_at(cfg, ckpt, device)[0]

    def initial(cfg: ExperimentConfig, seed: int, n_train: int, device: torch.device):
        # leaves the generator where fine-tuning's training loop started, so LOO members draw the
        # same dropout masks as the fine-tuning run did (its control member retraces the checkpoints)
        name = checkpoint_model_path(io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[-1]))
        model, batches = seeded_init(cfg, seed, n_train, name)
        return model.to(device), batches

    def batches(cfg: ExperimentConfig, seed: int, n_train: int) -> list:
        # LOO protocols paper/paired (DESIGN 5): reset torch.manual_seed(seed), then the shuffled
        # batches shared by every removed j; LoRA dropout then draws from the generator after them
        torch.manual_seed(seed)
        return epoch_batches(n_train, cfg.batch_size, cfg.epochs)

    return Backend(from_checkpoint=from_checkpoint, initial=initial, batches=batches, inputs=inputs,
                   lr=lambda cfg, n_steps: (lambda step: cfg.lr * decay_factor(step, n_steps)),
                   train_mode=True, loo_protocol="scratch")


# ---------------------------------------------------------------- a tiny local ViT
def make_tiny(path: str | Path, num_layers: int = 2, hidden_size: int = 32, image_size: int = 32,
              patch_size: int = 8, intermediate_size: int = 64, num_heads: int = 2, seed: int = 0) -> Path:
    """Save a tiny random ViT backbone (no head, like the in21k checkpoint) + image processor with save_pretrained."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    path = Path(path)
    config = ViTConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=intermediate_size, image_size=image_size, patch_size=patch_size)
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        ViTModel(config).save_pretrained(path)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tda.vit", description=__doc__.splitlines()[0])
    p.add_argument("--make_tiny", metavar="DIR", required=True,
                   help="write a tiny random ViT (2 layers, hidden 32, image 32, patch 8) to DIR")
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args(argv)
    path = make_tiny(args.make_tiny, num_layers=args.layers)
    print(f"wrote a tiny ViT to {path}/: try it with {MODEL_ENV}={path} bash run_experiment.sh vit_digits3_10pc")


if __name__ == "__main__":
    from . import cli
    cli.run(_main)
