"""Provenance: content hashes of exactly what each artefact was computed from, and whether it is still current.

Every artefact records the digests of its inputs: subset tensors <- their index list and the source
data; checkpoints <- the subset tensors, the experiment's constants, the seed and the training code;
scores <- the seed's checkpoints, the subsets, the method, its settings and its code; results <- the
score files. The code is a digest per repository module the computation runs (`tda.codehash`: parsed
code, comments and docstrings not counted), the torch version, which path computed (the CNN C
kernels, the kernels on torch's ops, vmapped members, plain torch.func; CUDA or the CPU) and, where
the C kernels ran, their source. A step keeps an artefact only when the inputs it recorded equal what
is on disk now, and otherwise says which input changed. Digests are SHA-256 over file bytes (files are
written deterministically, see `tda.io`), so hashing costs milliseconds per seed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import codehash
from .config import ExperimentConfig, TDAError
from .kernels import native


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex, 32 characters); a one-line error when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:32]
    except OSError as e:
        raise TDAError(f"cannot read {path}: {e.strerror or e}")


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able value, tensors and arrays by their bytes, shape and dtype."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()[:32]


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, np.ndarray):
        h.update(f"array{obj.shape}{obj.dtype}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(json.dumps(obj, default=str).encode())


def config_digest(cfg: ExperimentConfig) -> str:
    """The experiment's constants (everything but where its files live)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("root", "task_spec")}
    return digest({**fields, "task": dataclasses.asdict(cfg.spec), "ckpt_epochs": cfg.ckpt_epochs})


def subset_inputs(cfg: ExperimentConfig) -> dict:
    """Digests of the train and test subset tensor files an experiment reads."""
    return {"training subset": file_digest(cfg.train_subset_pt), "test subset": file_digest(cfg.test_subset_pt)}


def code_facts(modules: list[str], path: str) -> dict:
    """The code of a computation: digests of the repository modules `modules` run (through their imports), the torch
    version, the path that computes (e.g. 'C kernels', 'torch.func on cuda') and, where the C kernels run, their source."""
    facts = {"modules": codehash.code_digests(modules), "torch": str(torch.__version__), "path": path}
    if path.startswith("C kernels"):
        facts["C source"] = {str(f.relative_to(codehash.REPO)): codehash.c_digest(f.read_text()) for f in (*native.HEADERS, *native.SOURCES)}
    return facts


def checkpoint_inputs(cfg: ExperimentConfig, seed: int, backend_facts: dict, subsets: dict | None = None,
                      code: dict | None = None) -> dict:
    """What a seed's checkpoints are computed from: subsets, constants, seed, model family facts, training code."""
    return {**(subsets or subset_inputs(cfg)), "config": config_digest(cfg), "seed": seed, "model": backend_facts,
            "code": code or {}}


def score_inputs(cfg: ExperimentConfig, seed: int, method: str, settings: dict, subsets: dict | None = None,
                 code: dict | None = None) -> dict:
    """What a seed's scores are computed from: its checkpoints, the subsets, the method, its settings and its code."""
    return {"checkpoint": [file_digest(cfg.ckpt_path(seed, e)) for e in cfg.ckpt_epochs],
            **(subsets or subset_inputs(cfg)), "config": config_digest(cfg), "method": method, "settings": settings,
            "code": code or {}}


def _code_change(recorded: Any, current: dict) -> str:
    """What differs between two records of code, in a few words (the first file, the torch version or the path)."""
    if not isinstance(recorded, dict) or "modules" not in recorded:
        return "code changed (no record of the code)"
    if recorded.get("modules") != current.get("modules"):
        return f"code changed ({codehash.first_difference(recorded.get('modules', {}), current.get('modules', {}))})"
    for key in ("torch", "path"):
        if recorded.get(key) != current.get(key):
            return f"code changed ({key} {recorded.get(key)} -> {current.get(key)})"
    rec, cur = recorded.get("C source"), current.get("C source")
    if isinstance(rec, dict) and isinstance(cur, dict):
        return f"code changed ({codehash.first_difference(rec, cur)})"
    return f"code changed ({native.SOURCE.parent.relative_to(codehash.REPO)})"


def changed(recorded: dict | None, current: dict) -> str | None:
    """None when `recorded` equals `current`, else a few words naming the first input that differs."""
    if not isinstance(recorded, dict):
        return "no record of its inputs"
    for key, value in current.items():
        if recorded.get(key) != value:
            if key == "code":
                return _code_change(recorded.get(key), value)
            if key == "settings" and isinstance(value, dict) and isinstance(recorded.get(key), dict):
                diff = [f"{k} {recorded[key].get(k)!r} -> {v!r}" for k, v in value.items() if recorded[key].get(k) != v]
                return f"settings changed ({', '.join(diff)})"
            return f"{key} changed"
    return None
