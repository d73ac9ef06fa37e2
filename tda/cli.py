"""Shared command-line plumbing of the entry scripts: arguments, devices, one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch

from .config import ExperimentConfig, TDAError, parse_experiment
from .ranges import POSITIVE_INT, ranged
from .seeds import load_seeds, resolve_seed_ids
from .workers import default_workers


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser(description: str) -> argparse.ArgumentParser:
    return _Parser(description=description)


def add_experiment_args(p: argparse.ArgumentParser, seeds: bool = True) -> None:
    """--experiment, and for per-seed scripts --seed_id, --device, --overwrite, --workers."""
    p.add_argument("--experiment", required=True, help="<model>_<task>_<n>pc, e.g. cnn_digits3_10pc")
    if seeds:
        p.add_argument("--seed_id", required=True, help="index into random_seeds.pt (0..9) or 'all'")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where to compute; auto: CUDA when available, else the CPU (default: auto)")
        p.add_argument("--overwrite", action="store_true", help="recompute finished outputs")
        p.add_argument("--workers", type=ranged(int, POSITIVE_INT), default=None,
                       help="seeds computed in parallel processes (default: $TDA_WORKERS, else one per CPU core "
                            "with one thread each, or one per visible GPU; 1: all in this process)")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TDAError("--device cuda requested but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def workers(args, device: torch.device) -> int:
    """--workers, or its default for the device (one per CPU core or visible GPU)."""
    if args.workers is None:
        return default_workers(device)
    if args.workers < 1:
        raise TDAError(f"--workers must be >= 1, got {args.workers}")
    return args.workers


def experiment_and_seeds(args) -> tuple[ExperimentConfig, list[int]]:
    """Parse --experiment and --seed_id into a config and the list of seeds (not ids) to run."""
    cfg = parse_experiment(args.experiment)
    seeds = load_seeds(cfg.root)
    return cfg, [seeds[k] for k in resolve_seed_ids(str(args.seed_id), seeds)]


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry script's main; a TDAError becomes `error: ...` on one line and exit code 2."""
    try:
        main(argv)
    except TDAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun to continue", file=sys.stderr)
        sys.exit(130)
