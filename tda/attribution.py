"""The per-seed TDA driver (DESIGN 5, 7): load subsets and checkpoints, run a method on each checkpoint, save.

Each method writes tda_scores/<experiment>/<method>/<seed>.pt holding `scores` float32
[n_ckpts, n_train, n_test], the checkpoint epochs, both index lists and the settings used. A seed
whose outputs exist is skipped unless `overwrite`.

How a model is obtained is a `Backend`: the CNNs' is here; a ViT experiment uses
`tda.vit.attribution_backend(cfg)` (the methods in tda.methods only see model / params / frozen).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import io
from .config import ExperimentConfig, TDAError
from .methods.ats import ats_scores
from .methods.common import Params, per_sample_losses, split_params, use_vmap
from .methods.grad_sim import grad_dot_and_cos
from .methods.influence import LISSA_NOTE, cg_scores, lissa_scores, lissa_steps
from .methods.loo import LR, PROTOCOLS, loo_continue, loo_scratch
from .models import build_cnn
from .training import epoch_batches, seeded_init

Batches = list[list[torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """What the driver needs to know about a model family.

    from_checkpoint(cfg, ckpt, device): the model with the checkpoint's weights, in eval mode; its
        trainable parameters are what attributions are taken over.
    initial(cfg, seed, n_train, device): (the seed's initial model, its per-epoch batch order), as training drew them.
    batches(cfg, seed, n_train): the per-epoch batch order of the LOO continuation protocols (paper, paired).
    inputs(cfg, subset): model inputs of a subset dict ('images', 'labels', 'indices').
    lr(cfg, n_steps): learning rate of a (re)training run of n_steps: a float or a per-step schedule.
    train_mode: train in train mode (dropout) during LOO retraining.
    loo_protocol: the default LOO protocol of the family (DESIGN 5).
    """

    from_checkpoint: Callable[[ExperimentConfig, dict, torch.device], nn.Module]
    initial: Callable[[ExperimentConfig, int, int, torch.device], tuple[nn.Module, Batches]]
    batches: Callable[[ExperimentConfig, int, int], Batches]
    inputs: Callable[[ExperimentConfig, dict], torch.Tensor] = lambda cfg, subset: subset["images"]
    lr: Callable[[ExperimentConfig, int], LR] = lambda cfg, n_steps: cfg.lr
    train_mode: bool = False
    loo_protocol: str = "paper"


def _cnn_from_checkpoint(cfg: ExperimentConfig, ckpt: dict, device: torch.device) -> nn.Module:
    model = build_cnn(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise TDAError(f"checkpoint of {cfg.name} does not fit the {cfg.model} model ({str(e).splitlines()[0]}): "
                       f"retrain with `python {cfg.train_script} --experiment {cfg.name} --seed_id <id> --overwrite`")
    return model.to(device).eval()


def _cnn_initial(cfg: ExperimentConfig, seed: int, n_train: int, device: torch.device):
    model, batches = seeded_init(cfg, seed, n_train)
    return model.to(device).eval(), batches


def _cnn_loo_batches(cfg: ExperimentConfig, seed: int, n_train: int) -> Batches:
    # The reference's LOO loads the checkpoint, then calls torch.manual_seed(seed) and iterates a
    # fresh DataLoader(shuffle=True): its batches are drawn straight after the seed, with no model
    # construction in between, so they are not the training run's order (seeded_init), but they are
    # the same for every removed j, which is all the protocol needs (DESIGN 5).
    torch.manual_seed(seed)
    return epoch_batches(n_train, cfg.batch_size, cfg.epochs)


CNN_BACKEND = Backend(from_checkpoint=_cnn_from_checkpoint, initial=_cnn_initial, batches=_cnn_loo_batches)


def backend_for(cfg: ExperimentConfig) -> Backend:
    """The CNN backend, or for ViT experiments the one `tda.vit.attribution_backend(cfg)` provides."""
    if cfg.model != "vit":
        return CNN_BACKEND
    try:
        from .vit import attribution_backend  # noqa: PLC0415 - heavy import only for ViT experiments
    except ImportError as e:
        raise TDAError(f"{cfg.name}: the ViT attribution backend is not available ({e})")
    return attribution_backend(cfg)


@dataclass
class SeedData:
    """Everything one seed's attribution needs, on the compute device."""

    cfg: ExperimentConfig
    seed: int
    device: torch.device
    backend: Backend
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_indices: torch.Tensor
    test_indices: torch.Tensor
    progress: bool = True
    _ckpts: list[dict] | None = field(default=None, repr=False)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def checkpoints(self) -> list[dict]:
        """The seed's n_ckpts checkpoints (a one-line error naming the training script if one is missing)."""
        if self._ckpts is None:
            self._ckpts = io.load_checkpoints(self.cfg, self.seed)
        return self._ckpts

    def model_at(self, ckpt: dict) -> tuple[nn.Module, Params, Params]:
        """(model in eval mode, trainable params, frozen) at a checkpoint."""
        model = self.backend.from_checkpoint(self.cfg, ckpt, self.device)
        params, frozen = split_params(model)
        return model, params, frozen

    def each_checkpoint(self, what: str):
        """Yield (model, params, frozen) per checkpoint, under a progress bar."""
        for ck in tqdm(self.checkpoints(), desc=f"{what} seed {self.seed}", unit="ckpt", leave=False,
                       disable=not self.progress):
            yield self.model_at(ck)


def load_seed_data(cfg: ExperimentConfig, seed: int, device: torch.device | str = "cpu",
                   subsets: tuple[dict, dict] | None = None, backend: Backend | None = None,
                   progress: bool = True) -> SeedData:
    """Subsets (loaded unless given) moved to `device` for one seed."""
    device = torch.device(device)
    backend = backend or backend_for(cfg)
    train, test = subsets if subsets is not None else io.load_subsets(cfg)
    return SeedData(cfg, seed, device, backend,
                    backend.inputs(cfg, train).to(device), train["labels"].to(device),
                    backend.inputs(cfg, test).to(device), test["labels"].to(device),
                    train["indices"], test["indices"], progress)


def _common_settings(d: SeedData) -> dict:
    return {"seed": d.seed, "device": str(d.device), "dtype": "float32", "n_train": d.n_train,
            "n_test": len(d.y_test), "model": d.cfg.model, "members_vmapped": use_vmap(d.device, None)}


# ---------------------------------------------------------------- the methods on one seed
def compute_loo(d: SeedData, protocol: str | None = None, chunk: int | None = None) -> tuple[dict, dict]:
    """LOO scores [n_ckpts, N, M] of one seed under `protocol` (paper / paired / scratch; default: the backend's)."""
    cfg, b = d.cfg, d.backend
    protocol = protocol or b.loo_protocol
    if protocol not in PROTOCOLS:
        raise TDAError(f"unknown LOO protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    settings = {**_common_settings(d), "method": "loo", "protocol": protocol, "lr": cfg.lr,
                "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "chunk": chunk or 0, "train_mode": b.train_mode}
    ckpts = d.checkpoints()
    if protocol == "scratch":
        model, batches = b.initial(cfg, d.seed, d.n_train, d.device)
        params, frozen = split_params(model)
        lr = b.lr(cfg, sum(len(e) for e in batches))
        tau, control = loo_scratch(model, params, frozen, d.x_train, d.y_train, d.x_test, d.y_test, batches, lr,
                                   cfg.weight_decay, cfg.ckpt_epochs, chunk, b.train_mode)
        # the control member retraces the training run: its test losses should match the checkpoints'
        diffs = []
        for ck, c_loss in zip(ckpts, control):
            m, p, f = d.model_at(ck)
            with torch.no_grad():
                diffs.append(float((per_sample_losses(m, p, f, d.x_test, d.y_test) - c_loss).abs().max()))
        settings["control_vs_checkpoint_max_abs_test_loss_diff"] = diffs
        settings["members"] = d.n_train + 1
        settings["batch_order"] = "training run's (Backend.initial)"
        return {"loo": tau}, {"loo": settings}
    batches = b.batches(cfg, d.seed, d.n_train)
    lr = b.lr(cfg, sum(len(e) for e in batches))
    out = []
    for model, params, frozen in d.each_checkpoint(f"loo/{protocol}"):
        out.append(loo_continue(model, params, frozen, d.x_train, d.y_train, d.x_test, d.y_test, batches, lr,
                                cfg.weight_decay, paired=protocol == "paired", chunk=chunk,
                                train_mode=b.train_mode))
    settings["members"] = d.n_train + (protocol == "paired")
    settings["batch_order"] = "LOO continuation's (Backend.batches; CNN: the reference's, drawn right after manual_seed)"
    return {"loo": torch.stack(out)}, {"loo": settings}


def compute_ats(d: SeedData, chunk: int = 64) -> tuple[dict, dict]:
    """ATS scores [n_ckpts, N, M] of one seed: one fresh-Adam step on each z_j (DESIGN 5)."""
    cfg = d.cfg
    out = [ats_scores(m, p, f, d.x_train, d.y_train, d.x_test, d.y_test, cfg.lr, cfg.weight_decay,
                      member_chunk=chunk) for m, p, f in d.each_checkpoint("ats")]
    return {"ats": torch.stack(out)}, {"ats": {**_common_settings(d), "method": "ats", "lr": cfg.lr,
                                               "weight_decay": cfg.weight_decay, "betas": [0.9, 0.999],
                                               "eps": 1e-8, "chunk": chunk}}


def compute_if(d: SeedData, solver: str = "lissa", order: str = "auto", damping: float | None = None,
               tol: float = 1e-4, max_iter: int = 500, chunk: int = 64) -> tuple[dict, dict]:
    """IF scores [n_ckpts, N, M] of one seed with the LiSSA (reference) or CG solver (DESIGN 5)."""
    cfg = d.cfg
    s = {**_common_settings(d), "method": "if", "solver": solver}
    out = []
    if solver == "lissa":
        orders = []
        for m, p, f in d.each_checkpoint("if/lissa"):
            tau, used = lissa_scores(m, p, f, d.x_train, d.y_train, d.x_test, d.y_test, cfg.lissa_damp,
                                     cfg.lissa_scale, cfg.lissa_batch_size, order, vec_chunk=chunk)
            out.append(tau)
            orders.append(used)
        s.update(damp=cfg.lissa_damp, scale=cfg.lissa_scale, batch_size=cfg.lissa_batch_size,
                 steps=lissa_steps(d.n_train, cfg.lissa_batch_size), order=orders[0], note=LISSA_NOTE)
    elif solver == "cg":
        damping = cfg.weight_decay if damping is None else damping
        infos = []
        for m, p, f in d.each_checkpoint("if/cg"):
            tau, info = cg_scores(m, p, f, d.x_train, d.y_train, d.x_test, d.y_test, damping, tol, max_iter,
                                  vec_chunk=chunk)
            out.append(tau)
            infos.append(info)
        s.update(damping=damping, tol=tol, max_iter=max_iter, solved_for=infos[0]["solved_for"],
                 iterations=[i["iterations"] for i in infos],
                 max_rel_residual=[i["max_rel_residual"] for i in infos],
                 converged=all(i["converged"] for i in infos),
                 negative_curvature=[i["negative_curvature"] for i in infos])
    else:
        raise TDAError(f"unknown IF solver {solver!r}: choose lissa or cg")
    return {"if": torch.stack(out)}, {"if": s}


def compute_gd_gc(d: SeedData, chunk: int = 256) -> tuple[dict, dict]:
    """Grad-Dot and Grad-Cos scores [n_ckpts, N, M] of one seed (DESIGN 5)."""
    gd, gc = zip(*[grad_dot_and_cos(m, p, f, d.x_train, d.y_train, d.x_test, d.y_test, grad_chunk=chunk)
                   for m, p, f in d.each_checkpoint("gd+gc")])
    s = {**_common_settings(d), "chunk": chunk}
    return {"gd": torch.stack(gd), "gc": torch.stack(gc)}, {"gd": {**s, "method": "gd"}, "gc": {**s, "method": "gc"}}


# ---------------------------------------------------------------- over seeds, with skipping and saving
def _mismatch(cfg: ExperimentConfig, method: str, seed: int, expect: dict) -> str:
    try:
        old = io.load_scores(cfg, method, seed).get("settings", {})
    except TDAError:
        return ""
    diff = [f"{k}={old.get(k)!r}" for k, v in expect.items() if old.get(k) != v]
    return f" (computed with {', '.join(diff)}; --overwrite to recompute)" if diff else ""


def run_seeds(cfg: ExperimentConfig, seeds: list[int], methods: tuple[str, ...],
              compute: Callable[[SeedData], tuple[dict, dict]], device: torch.device | str = "cpu",
              overwrite: bool = False, expect: dict | None = None, progress: bool = True) -> list[dict]:
    """Run `compute` on every seed whose `methods` outputs are not all there (or all, with `overwrite`); save them.

    `compute(seed_data)` returns ({method: scores [n_ckpts, N, M]}, {method: settings dict}).
    `expect`: settings a kept file should have; a skipped seed whose file differs says so in its note.
    Returns one row per seed: {'seed', 'skipped', 'paths', 'seconds', 'note'}.
    """
    subsets = None
    rows = []
    backend = backend_for(cfg)
    for seed in tqdm(seeds, desc=f"{'+'.join(methods)} {cfg.name}", unit="seed", disable=not progress):
        paths = [cfg.scores_path(m, seed) for m in methods]
        if not overwrite and all(p.exists() for p in paths):
            note = _mismatch(cfg, methods[0], seed, expect) if expect else ""
            rows.append({"seed": seed, "skipped": True, "paths": paths, "seconds": 0.0, "note": note})
            continue
        subsets = subsets or io.load_subsets(cfg)
        d = load_seed_data(cfg, seed, device, subsets, backend, progress)
        t0 = time.perf_counter()
        scores, settings = compute(d)
        seconds = time.perf_counter() - t0
        written = []
        for m in methods:
            s = {**settings[m], "seconds": seconds}
            written.append(io.save_scores(cfg, m, seed, scores[m], d.train_indices, d.test_indices, s))
        note = ""
        s = settings[methods[0]]
        if s.get("converged") is False:
            note = f" (CG did not reach tol {s['tol']}: max relative residual {max(s['max_rel_residual']):.2g})"
        rows.append({"seed": seed, "skipped": False, "paths": written, "seconds": seconds, "note": note})
    return rows


def run_loo(cfg: ExperimentConfig, seeds: list[int], device="cpu", overwrite: bool = False,
            protocol: str | None = None, chunk: int | None = None, progress: bool = True) -> list[dict]:
    """LOO for the given seeds (tda_scores/<experiment>/loo/<seed>.pt)."""
    protocol = protocol or backend_for(cfg).loo_protocol
    return run_seeds(cfg, seeds, ("loo",), lambda d: compute_loo(d, protocol, chunk), device, overwrite,
                     {"protocol": protocol}, progress)


def run_ats(cfg: ExperimentConfig, seeds: list[int], device="cpu", overwrite: bool = False, chunk: int = 64,
            progress: bool = True) -> list[dict]:
    """ATS for the given seeds (tda_scores/<experiment>/ats/<seed>.pt)."""
    return run_seeds(cfg, seeds, ("ats",), lambda d: compute_ats(d, chunk), device, overwrite, None, progress)


def run_if(cfg: ExperimentConfig, seeds: list[int], device="cpu", overwrite: bool = False, solver: str = "lissa",
           order: str = "auto", damping: float | None = None, tol: float = 1e-4, max_iter: int = 500,
           chunk: int = 64, progress: bool = True) -> list[dict]:
    """IF for the given seeds (tda_scores/<experiment>/if/<seed>.pt)."""
    return run_seeds(cfg, seeds, ("if",), lambda d: compute_if(d, solver, order, damping, tol, max_iter, chunk),
                     device, overwrite, {"solver": solver}, progress)


def run_gd_gc(cfg: ExperimentConfig, seeds: list[int], device="cpu", overwrite: bool = False, chunk: int = 256,
              progress: bool = True) -> list[dict]:
    """Grad-Dot and Grad-Cos for the given seeds (tda_scores/<experiment>/{gd,gc}/<seed>.pt)."""
    return run_seeds(cfg, seeds, ("gd", "gc"), lambda d: compute_gd_gc(d, chunk), device, overwrite, None, progress)


def summary_lines(cfg: ExperimentConfig, methods: tuple[str, ...], rows: list[dict]) -> list[str]:
    """What an entry script prints: one line per seed, then where the outputs are."""
    lines = [f"seed {r['seed']}: " + ("already done, kept" if r["skipped"] else f"done in {r['seconds']:.1f} s")
             + r["note"] for r in rows]
    lines += [f"scores in {cfg.scores_dir / m}/<seed>.pt" for m in methods]
    return lines
