"""ViT-B/16 + LoRA as a backend: a pretrained ViT with a new 10-way head and PEFT LoRA on query and value.

Only the LoRA matrices and the head are trained; checkpoints hold exactly those tensors, named as
in `model.named_parameters()`, plus the pretrained model they were fine-tuned from, so the TDA
scripts need no flag. Learning rate decays linearly to 0 over all steps; LoRA dropout is on while
training (and while the LOO ensemble retrains); the default LOO protocol is `scratch`.

Attention is forced to the eager implementation: PyTorch's SDPA kernel has no forward-mode AD
(jvp), which the Hessian-vector products of IF need, and no vmap batching rule.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .. import io
from ..config import ExperimentConfig, TDAError
from ..vit import image_settings, load_pretrained, processed_subset, recorded_name, vit_config
from .base import Backend

# transformers 5 renamed ViT's attention projections query/key/value -> q_proj/k_proj/v_proj; the
# paper names the old modules, so they are mapped when the model has only the new ones
RENAMED = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def lora_target_modules(model: nn.Module, targets) -> list[str]:
    """The module names LoRA wraps: the config's names, or their transformers-5 renames."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    out = []
    for t in targets:
        if t in leaves:
            out.append(t)
        elif RENAMED.get(t) in leaves:
            out.append(RENAMED[t])
        else:
            raise TDAError(f"the model has no module {t!r} to put LoRA on (nor {RENAMED.get(t, t)!r})")
    return out


def build_model(cfg: ExperimentConfig, name_or_path: str) -> nn.Module:
    """Pretrained ViT + new 10-way head + LoRA; draws the head's and LoRA's init from the global generator."""
    from peft import LoraConfig, get_peft_model
    from transformers import ViTForImageClassification
    vit_config(name_or_path)  # one-line errors for a bad id/directory or a non-ViT model
    base = load_pretrained("weights", name_or_path, ViTForImageClassification.from_pretrained,
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


def decay_factor(step: int, total_steps: int) -> float:
    """Linear decay to 0 over all steps, no warm-up: the learning-rate factor of the `step`-th (0-based) step."""
    return max(0.0, 1.0 - step / total_steps)


def checkpoint_model_path(ckpt: dict) -> str:
    """The pretrained model a checkpoint was fine-tuned from."""
    if "model_name_or_path" not in ckpt:
        raise TDAError("ViT checkpoint records no model_name_or_path: retrain it with run_vit_finetuning.py --overwrite")
    return str(ckpt["model_name_or_path"])


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


class ViTBackend(Backend):
    """ViT-LoRA fine-tuning from the pretrained model `name_or_path` (default: the one the checkpoints record)."""

    train_mode = True
    loo_protocol = "scratch"
    paper_loo_is_continue = False  # the paper retrained from the pretrained weights with a fresh, unpaired LoRA
    eval_chunk = 128

    def __init__(self, cfg: ExperimentConfig, name_or_path: str | None = None):
        super().__init__(cfg)
        self._name = name_or_path
        self._image: tuple | None = None

    @property
    def name_or_path(self) -> str:
        if self._name is None:
            self._name = recorded_model_path(self.cfg)
        return self._name

    def build(self) -> nn.Module:
        return build_model(self.cfg, self.name_or_path)

    def model_type(self) -> type:
        from peft import PeftModel
        return PeftModel  # without loading the pretrained weights

    def lr_schedule(self, total_steps: int) -> Callable[[int], float]:
        return lambda step: decay_factor(step, total_steps)

    def inputs(self, subset: dict, split: str) -> torch.Tensor:
        if self._image is None:
            self._image = image_settings(self.name_or_path)
        size, mean, std = self._image
        name = f"train_{self.cfg.num_per_class}pc" if split == "train" else "test"
        return processed_subset(self.cfg, subset, name, size, mean, std)["images"]

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

    def checkpoint_meta(self) -> dict:
        return {"model_name_or_path": recorded_name(self.name_or_path)}

    def provenance(self) -> dict:
        return {**super().provenance(), "pretrained": recorded_name(self.name_or_path)}

    def load(self, ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
        path = checkpoint_model_path(ckpt)
        if self._name is None:
            self._name = path
        elif recorded_name(self._name) != path:
            raise TDAError(f"checkpoint was fine-tuned from {path}, not {self._name}: refit the seeds of "
                           f"{self.cfg.name} from one model with run_vit_finetuning.py --overwrite")
        return super().load(ckpt, device)

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != names:
            extra, missing = sorted(set(state) - names)[:2], sorted(names - set(state))[:2]
            raise TDAError(f"checkpoint does not match the ViT-LoRA model (unexpected {extra}, missing {missing}): "
                           f"it was made with other LoRA settings or another model; retrain with --overwrite")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n].to(p.device, p.dtype))
