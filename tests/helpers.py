"""Helpers shared by the tests: entry-script loading and running, tolerances, and plain autograd references."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    """An entry script (e.g. 'run_loo') imported as a module, so its `main(argv)` can be called in-process."""
    from tda.pipeline import entry_script
    return entry_script(f"{name.removesuffix('.py')}.py")


def run_script(name: str, *args: str, root: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an entry script as a user would, in a fresh interpreter, with TDA_ROOT=root and cwd=root."""
    full_env = dict(os.environ, TDA_ROOT=str(root), **(env or {}))
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def close(fast: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-7) -> None:
    """Equal up to rtol relative to the reference's largest entry (entries near 0 are judged on that scale)."""
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * scale)


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def autograd_grads(model, x, y) -> torch.Tensor:
    """Per-sample gradients over the trainable parameters, one autograd call per sample, [B, P]."""
    ps = trainable(model)
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        F.cross_entropy(_logits(model(x[i:i + 1])), y[i:i + 1]), ps)]) for i in range(len(y))])


def autograd_hvp(model, x, y, v: torch.Tensor) -> torch.Tensor:
    """H v by double backward, H the Hessian of the mean loss on (x, y) over the trainable parameters."""
    ps = trainable(model)
    g = torch.autograd.grad(F.cross_entropy(_logits(model(x)), y), ps, create_graph=True)
    gv = sum((gi.flatten() * vi).sum() for gi, vi in zip(g, torch.split(v, [p.numel() for p in ps])))
    return torch.cat([h.flatten() for h in torch.autograd.grad(gv, ps)])


def make_tiny_root(root: Path, seeds=(446, 724, 571), n_per_class: int = 2, test_stride: int = 15) -> Path:
    """A tiny digits3 experiment under `root`: `seeds` in its random_seeds.pt, n per class, every k-th test image."""
    from tda import io
    from tda.config import get_task
    from tda.data import generate_subsets
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.tensor(list(seeds), dtype=torch.int64), root / "random_seeds.pt")
    data_dir = root / "data" / "digits3"
    generate_subsets(get_task("digits3"), [n_per_class], data_dir, "")
    io.write_index_list(io.read_index_list(data_dir / "test_subset.txt")[::test_stride], data_dir / "test_subset.txt")
    generate_subsets(get_task("digits3"), [n_per_class], data_dir, "")
    return root


def pipeline(experiment: str) -> list[list[str]]:
    """The steps of run_experiment.sh (tda.pipeline) for a CNN experiment, as (script, arguments...) lists."""
    from tda.config import parse_experiment
    from tda.pipeline import steps
    return [[script, *args] for _, script, args in steps(parse_experiment(experiment), [])]


def artefacts(root: Path) -> dict[str, bytes]:
    """What a run produced, comparable across runs: subset and checkpoint files and visible results as bytes,
    score files by their tensors (their settings hold timings)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if rel.startswith("tda_scores/"):
            d = torch.load(p, weights_only=True)
            out[rel] = repr([d["scores"].numpy().tobytes(), d["train_indices"].tolist(), d["test_indices"].tolist(),
                             d["provenance"]]).encode()
        elif rel.startswith(("data/", "models/", "results/")):
            out[rel] = p.read_bytes()
    return out
