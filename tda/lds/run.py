"""The LDS ground truth of an experiment, per seed: its random subsets (one set for every seed) and the outcomes of
retraining the seed on each of them as one ensemble (`run_lds.py`; the retraining is `tda.lds.ensemble`).

Files, under tda_scores/<experiment>/lds/:
  subsets.pt   `masks` bool [S, N], `alpha`, `subset_seed`, `train_indices`, and what they were drawn from
  <seed>.pt    `loss`, `margin` float32 [C, S, M] after each checkpoint epoch, the control member's `control_loss`,
               `control_margin` [C, M], `ckpt_epochs`, `train_indices`, `test_indices`, `settings`, `provenance`
Like score files they record what they were computed from (the seed's checkpoints, the subsets, the masks, the
code); a seed whose outcomes are current is skipped unless `overwrite`, one whose inputs changed is recomputed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import io, provenance
from ..attribution import load_seed_data
from ..backends import Backend, get_backend
from ..config import ExperimentConfig, TDAError
from ..dispatch import planned_path
from ..engine.ensemble import stack
from ..engine.functional import split_params
from ..locking import claim, lock_path
from ..methods.loo import CONTROL_TOLERANCE, learning_rate
from ..workers import raise_failed_rows, run_per_seed
from .ensemble import masked_ensemble, member_outcomes, subset_masks, subset_size

LDS_DIR = "lds"
MASKS_FILE = "subsets.pt"


@dataclass(frozen=True)
class LDSSettings:
    """How the subsets are drawn: how many, which fraction of the training set, from which generator seed."""

    subsets: int = 50
    alpha: float = 0.5
    subset_seed: int = 0


def lds_dir(cfg: ExperimentConfig) -> Path:
    """tda_scores/<experiment>/lds/: the subsets and every seed's outcomes."""
    return cfg.scores_dir / LDS_DIR


def outcome_path(cfg: ExperimentConfig, seed: int) -> Path:
    return lds_dir(cfg) / f"{seed}.pt"


def masks_record(cfg: ExperimentConfig, st: LDSSettings, train_indices: list[int]) -> dict:
    """What a set of masks is drawn from: the settings, N, and the training subset they index."""
    return {**asdict(st), "n_train": len(train_indices), "train_indices": provenance.digest(list(train_indices))}


def load_masks(cfg: ExperimentConfig) -> dict:
    """The experiment's subsets file {'masks', 'alpha', 'subset_seed', 'train_indices', 'record'}."""
    return io.load_tensor_file(lds_dir(cfg) / MASKS_FILE, "LDS subsets",
                               f"run `python run_lds.py --experiment {cfg.name} --seed_id all`")


def ensure_masks(cfg: ExperimentConfig, st: LDSSettings, train_indices: list[int]) -> tuple[torch.Tensor, str]:
    """The masks [S, N] of these settings (drawn and saved once; redrawn when the settings differ) and their digest."""
    path, want = lds_dir(cfg) / MASKS_FILE, masks_record(cfg, st, train_indices)
    with claim(lock_path(lds_dir(cfg), "subsets")):
        if path.exists():
            got = load_masks(cfg)
            if isinstance(got, dict) and got.get("record") == want:
                return got["masks"], provenance.digest(got["masks"])
            tqdm.write(f"LDS subsets of {cfg.name}: redrawn ({path.name} holds other settings)")
        try:
            masks = subset_masks(len(train_indices), st.subsets, st.alpha, st.subset_seed)
        except ValueError as e:
            raise TDAError(f"LDS subsets of {cfg.name}: {e}")
        io.atomic_save({"masks": masks, "alpha": st.alpha, "subset_seed": st.subset_seed,
                        "train_indices": torch.as_tensor(train_indices), "record": want}, path)
    return masks, provenance.digest(masks)


def outcome_inputs(cfg: ExperimentConfig, seed: int, masks_digest: str, st: LDSSettings, backend: Backend,
                   device: torch.device | str, subsets: dict | None = None) -> dict | None:
    """The provenance of a seed's outcomes, or None while its checkpoints are missing."""
    if not all(cfg.ckpt_path(seed, e).exists() for e in cfg.ckpt_epochs):
        return None
    code = provenance.code_facts(["tda.lds.ensemble", type(backend).__module__], planned_path(backend.model_type(), device))
    return provenance.score_inputs(cfg, seed, "lds", {**asdict(st), "masks": masks_digest}, subsets, code)


def stale(cfg: ExperimentConfig, seed: int, inputs: dict) -> str | None:
    """None when a seed's outcomes exist and were computed from `inputs`; else why not."""
    path = outcome_path(cfg, seed)
    if not path.exists():
        return "missing"
    got = io.load_tensor_file(path, "LDS outcomes", "rerun with --overwrite")
    return provenance.changed(got.get("provenance") if isinstance(got, dict) else None, inputs)


def compute_seed(cfg: ExperimentConfig, seed: int, masks: torch.Tensor, st: LDSSettings, inputs: dict,
                 device: torch.device | str = "cpu", backend: Backend | None = None, chunk: int | None = None) -> dict:
    """Retrain one seed on every subset from its initialisation (its own batches), save the outcomes; its row."""
    data = load_seed_data(cfg, seed, device, backend, progress=False)
    b = data.backend
    model, batches = b.initial(seed, data.n_train)
    model.to(data.device)
    params, frozen = split_params(model)
    lr = learning_rate(b, cfg.lr, sum(len(e) for e in batches))
    t0 = time.perf_counter()
    out = masked_ensemble(model, params, frozen, data.x_train, data.y_train, data.x_test, data.y_test, batches, lr,
                          cfg.weight_decay, masks.to(data.device), cfg.ckpt_epochs, chunk, b.train_mode)
    seconds = time.perf_counter() - t0
    diffs = []  # the control member retraces the training run: its test losses should be the checkpoints'
    for ck, c_loss in zip(data.checkpoints, out.control_loss):
        m, p, f = data.model_at(ck)
        diffs.append(float((member_outcomes(m, stack(p, 1), f, data.x_test, data.y_test)[0, 0] - c_loss).abs().max()))
    ok = max(diffs) <= CONTROL_TOLERANCE
    if not ok:
        tqdm.write(f"warning: {cfg.name} seed {seed}: the LDS control member's test losses differ from the saved "
                   f"checkpoints' by up to {max(diffs):.2g}: the subsets' retrainings describe a slightly other model")
    settings = {**asdict(st), "subset_size": subset_size(data.n_train, st.alpha), "seed": seed,
                "device": str(data.device), "dtype": str(data.x_train.dtype).removeprefix("torch."), "chunk": chunk or 0,
                "members": len(masks) + 1, "seconds": seconds, "control_vs_checkpoint_max_abs_test_loss_diff": diffs,
                "control_matches_checkpoints": ok}
    f32 = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731
    path = outcome_path(cfg, seed)
    io.atomic_save({"loss": f32(out.loss), "margin": f32(out.margin), "control_loss": f32(out.control_loss),
                    "control_margin": f32(out.control_margin), "ckpt_epochs": torch.tensor(cfg.ckpt_epochs),
                    "train_indices": torch.as_tensor(data.train_indices), "test_indices": torch.as_tensor(data.test_indices),
                    "settings": settings, "provenance": inputs}, path)
    note = "" if ok else f" (warning: control member off the checkpoints by {max(diffs):.2g})"
    return {"seed": seed, "skipped": False, "paths": [path], "seconds": seconds, "note": note}


def attempt_seed(cfg: ExperimentConfig, seed: int, st: LDSSettings, device: torch.device | str,
                 backend: Backend | None, overwrite: bool, wait: bool, chunk: int | None) -> dict | None:
    """One seed under its claim, unless its outcomes are current (another process may just have computed them)."""
    with claim(lock_path(lds_dir(cfg), f"lds_{seed}"), wait) as got:
        if not got:
            return None
        backend = backend or get_backend(cfg)
        train, _ = io.load_subsets(cfg)
        masks, digest = ensure_masks(cfg, st, [int(i) for i in train["indices"]])
        inputs = outcome_inputs(cfg, seed, digest, st, backend, device)
        reason = "--overwrite" if overwrite else "missing" if inputs is None else stale(cfg, seed, inputs)
        if reason is None:
            return {"seed": seed, "skipped": True, "paths": [outcome_path(cfg, seed)], "seconds": 0.0, "note": ""}
        if reason not in ("missing", "--overwrite"):
            tqdm.write(f"recomputing lds seed {seed}: {reason}")
        return compute_seed(cfg, seed, masks, st, inputs or {}, device, backend, chunk)


def _seed_job(cfg: ExperimentConfig, seed: int, st: LDSSettings, device: str, overwrite: bool,
              chunk: int | None) -> dict:
    """One seed in a worker process (waits for its claim)."""
    return attempt_seed(cfg, seed, st, device, None, overwrite, True, chunk)


def run_lds(cfg: ExperimentConfig, seeds: list[int], st: LDSSettings = LDSSettings(), device: torch.device | str = "cpu",
            overwrite: bool = False, workers: int = 1, progress: bool = True, chunk: int | None = None,
            strict: bool = True) -> list[dict]:
    """The ground truth of every seed whose outcomes are not current (all with `overwrite`); one row per seed."""
    device, backend = torch.device(device), get_backend(cfg)
    io.sweep(lds_dir(cfg))
    train, _ = io.load_subsets(cfg)  # missing subsets: one error now, not one per seed
    masks, digest = ensure_masks(cfg, st, [int(i) for i in train["indices"]])
    subsets = provenance.subset_inputs(cfg)

    def is_done(seed: int) -> dict | None:
        inputs = outcome_inputs(cfg, seed, digest, st, backend, device, subsets)
        if overwrite or inputs is None or stale(cfg, seed, inputs) is not None:
            return None
        return {"seed": seed, "skipped": True, "paths": [outcome_path(cfg, seed)], "seconds": 0.0, "note": ""}

    rows = run_per_seed(seeds, is_done, lambda s, wait: attempt_seed(cfg, s, st, device, backend, overwrite, wait, chunk),
                        (_seed_job, lambda s: (cfg, s, st, str(device), overwrite, chunk)), workers, device,
                        f"lds {cfg.name}", progress)
    if strict:
        raise_failed_rows(rows)
    return rows
