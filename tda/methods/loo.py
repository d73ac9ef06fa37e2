"""Leave-one-out retraining (LOO), the ground truth: all N leave-one-out models trained at once as one ensemble.

Removing training sample j only sets its per-sample weight to 0 in the batch loss (the batch mean
still divides by the batch's full size), so every leave-one-out model sees the same batch sequence
and the N retrainings are one ensemble of stacked parameters, each member with its own Adam state.
Protocols (see docs/methods.md): `continue` retrains from each checkpoint and compares with the
checkpoint itself (`paper` names it for the CNNs, where it is the reference's LOO); `paired` adds a
control member that continues with nothing removed; `scratch` trains the full model and all N
leave-one-out models from the seed's initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backends import Backend
from ..config import TDAError
from ..dispatch import ensemble_losses, member_losses, train_ensemble
from ..engine.ensemble import LR, removal_weights, stack
from ..engine.functional import Loss, Params, cross_entropy, split_params
from ..ranges import POSITIVE_INT
from .base import Method, Scores, SeedData, option, register

PROTOCOLS = ("paper", "continue", "paired", "scratch")
#: the control member of `scratch` retraces the training run; test losses further apart than this are reported
CONTROL_TOLERANCE = 1e-4


def loo_continue(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor, batches: Sequence[Sequence[torch.Tensor]], lr: LR,
                 weight_decay: float, paired: bool = False, chunk: int | None = None, train_mode: bool = False,
                 eval_chunk: int = 4096, vectorize: bool | None = None, loss: Loss = cross_entropy) -> torch.Tensor:
    """LOO from a checkpoint theta (protocols paper / paired), tau [N, M] = L_i(theta_-j) - L_i(baseline).

    Every theta_-j continues from theta with a fresh Adam over all of `batches` without sample j.
    paired=False (the reference): baseline = theta itself. paired=True: baseline = a control member
    that continues with nothing removed on the same batches, so tau measures removal only.
    """
    n = len(y_train)
    weights = removal_weights(n, paired, x_train.device, next(iter(params.values())).dtype)

    def evaluate(members):
        return ensemble_losses(model, members, frozen, x_test, y_test, pair_chunk=eval_chunk, vectorize=vectorize,
                               loss=loss)

    losses = train_ensemble(model, params, frozen, x_train, y_train, batches, weights, lr, weight_decay,
                            evaluate=evaluate, chunk=chunk, train_mode=train_mode,
                            vectorize=vectorize, loss=loss)[0]
    if paired:
        return losses[1:] - losses[:1]
    # the baseline through the same path as the members, so tau holds no difference of summation order
    base = member_losses(model, stack(params, 1), frozen, x_test, y_test, eval_chunk, vectorize, loss)
    return losses - base


def loo_scratch(model: nn.Module, params0: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                x_test: torch.Tensor, y_test: torch.Tensor, batches: Sequence[Sequence[torch.Tensor]], lr: LR,
                weight_decay: float, snapshot_epochs: Sequence[int], chunk: int | None = None,
                train_mode: bool = False, eval_chunk: int = 4096,
                vectorize: bool | None = None, loss: Loss = cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """LOO from the initialisation (protocol scratch): tau [S, N, M] = L_i(theta_-j,c) - L_i(theta_c) per snapshot c.

    The full model theta_c is the ensemble's own control member (trained side by side on identical
    batches), so tau is paired. Also returns the control member's test losses [S, M], e.g. to check
    them against the saved checkpoints.
    """
    n = len(y_train)
    weights = removal_weights(n, True, x_train.device, next(iter(params0.values())).dtype)

    def evaluate(members):
        return ensemble_losses(model, members, frozen, x_test, y_test, pair_chunk=eval_chunk, vectorize=vectorize,
                               loss=loss)

    losses = torch.stack(train_ensemble(model, params0, frozen, x_train, y_train, batches, weights, lr,
                                        weight_decay, snapshot_epochs=snapshot_epochs, evaluate=evaluate,
                                        chunk=chunk, train_mode=train_mode, vectorize=vectorize, loss=loss))
    return losses[:, 1:] - losses[:, :1], losses[:, 0]


def learning_rate(backend: Backend, base_lr: float, total_steps: int) -> LR:
    """The (re)training run's learning rate: a float, or per step when the backend schedules it."""
    factor = backend.lr_schedule(total_steps)
    return base_lr if factor is None else (lambda step: base_lr * factor(step))


@register
@dataclass
class LOO(Method):
    """Leave-one-out retraining; tau > 0 means the sample helps (its removal raises the test loss)."""

    name = "loo"
    outputs = {"loo": "LOO"}
    script = "run_loo.py"
    key_options = ("protocol",)

    protocol: str | None = option(None, "continue: retrain from each checkpoint, baseline the checkpoint; paper: "
                                  "the paper's LOO, which for the CNNs is `continue` (their default); paired: "
                                  "continue plus a control member as baseline; scratch: train full and LOO models "
                                  "side by side from the initialisation (ViT default)", choices=PROTOCOLS)
    chunk: int | None = option(None, "train at most this many LOO models at once (default: as many as free memory "
                               "allows)", type=int, range=POSITIVE_INT)

    def resolved(self, backend: Backend) -> str:
        """The protocol asked for, or the family's default; `paper` only where we reproduce the paper's LOO."""
        protocol = self.protocol or backend.loo_protocol
        if protocol == "paper" and not backend.paper_loo_is_continue:
            raise TDAError(f"--protocol paper: the paper's LOO for {backend.cfg.model} models retrained each model "
                           "from the pretrained weights with a fresh, unpaired LoRA, which is not reproduced here; "
                           "use --protocol scratch (paired, same LoRA init and batches), continue or paired "
                           "(see docs/methods.md)")
        return protocol

    def key_settings(self, backend: Backend) -> dict:
        return {"protocol": self.resolved(backend)}

    def settings(self, data: SeedData) -> dict:
        cfg, protocol = data.cfg, self.resolved(data.backend)
        order = ("the training run's" if protocol == "scratch" else
                 "the LOO continuation's (torch.manual_seed(seed), then the shuffled loader)")
        return {**super().settings(data), "protocol": protocol, "chunk": self.chunk or 0, "lr": cfg.lr,
                "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "train_mode": data.backend.train_mode, "members": data.n_train + (protocol in ("paired", "scratch")),
                "batch_order": order}

    def note(self, settings: dict) -> str:
        if settings.get("control_matches_checkpoints") is False:
            return (f" (warning: the control member differs from the checkpoints by up to "
                    f"{max(settings['control_vs_checkpoint_max_abs_test_loss_diff']):.2g})")
        return ""

    def score_seed(self, data: SeedData) -> tuple[Scores, dict]:
        cfg, b, protocol = data.cfg, data.backend, self.resolved(data.backend)
        if protocol == "scratch":
            model, batches = b.initial(data.seed, data.n_train)
            model.to(data.device)
            params, frozen = split_params(model)
            lr = learning_rate(b, cfg.lr, sum(len(e) for e in batches))
            tau, control = loo_scratch(model, params, frozen, data.x_train, data.y_train, data.x_test, data.y_test,
                                       batches, lr, cfg.weight_decay, cfg.ckpt_epochs, self.chunk, b.train_mode,
                                       loss=data.loss)
            # the control member retraces the training run: its test losses should match the checkpoints'
            diffs = []
            for ck, c_loss in zip(data.checkpoints, control):
                m, p, f = data.model_at(ck)
                saved = member_losses(m, stack(p, 1), f, data.x_test, data.y_test, loss=data.loss)[0]
                diffs.append(float((saved - c_loss).abs().max()))
            ok = max(diffs) <= CONTROL_TOLERANCE
            if not ok:  # e.g. non-deterministic CUDA kernels: LOO then describes another model than the others
                tqdm.write(f"warning: {cfg.name} seed {data.seed}: the scratch control member's test losses differ "
                           f"from the saved checkpoints' by up to {max(diffs):.2g} (tolerance {CONTROL_TOLERANCE:g}): "
                           "LOO describes a slightly different model than the other methods")
            return {"loo": tau}, {"control_vs_checkpoint_max_abs_test_loss_diff": diffs,
                                  "control_tolerance": CONTROL_TOLERANCE, "control_matches_checkpoints": ok}
        out = []
        for ck in data.each_checkpoint(f"loo/{protocol}"):  # paper (CNN), continue, paired
            # reseeded for every checkpoint, as the reference does: the same batches, and with dropout the
            # same masks, whichever checkpoint the retraining continues from
            batches = b.continuation_batches(data.seed, data.n_train)
            lr = learning_rate(b, cfg.lr, sum(len(e) for e in batches))
            out.append(loo_continue(*ck.tensors(), batches, lr, cfg.weight_decay, paired=protocol == "paired",
                                    chunk=self.chunk, train_mode=b.train_mode, loss=data.loss))
        return {"loo": torch.stack(out)}, {}
