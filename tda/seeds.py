"""The paper's ten seeds (`random_seeds.pt`) and `--seed_id` resolution."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import PAPER_SEEDS, SEEDS_FILE, TDAError, repo_root


def write_random_seeds(path: Path) -> None:
    """Write the paper's seeds as an int64 tensor, the format of the reference's `random_seeds.pt`."""
    torch.save(torch.tensor(PAPER_SEEDS, dtype=torch.int64), path)


def load_seeds(root: Path | None = None) -> list[int]:
    """The seeds from `random_seeds.pt` at the repo root, falling back to the paper's list."""
    path = (root or repo_root()) / SEEDS_FILE
    if not path.exists():
        return list(PAPER_SEEDS)
    try:
        return [int(s) for s in torch.load(path, weights_only=True).tolist()]
    except Exception as e:  # noqa: BLE001 - a corrupt file must be a one-line error
        raise TDAError(f"cannot read {path} ({type(e).__name__}): restore it with `git checkout {SEEDS_FILE}`")


def resolve_seed_ids(seed_id: str, seeds: list[int]) -> list[int]:
    """`--seed_id K|all` -> list of seed ids (indices into random_seeds.pt)."""
    if seed_id == "all":
        return list(range(len(seeds)))
    try:
        k = int(seed_id)
    except ValueError:
        raise TDAError(f"--seed_id must be an integer 0..{len(seeds) - 1} or 'all', got {seed_id!r}")
    if not 0 <= k < len(seeds):
        raise TDAError(f"--seed_id {k} out of range: random_seeds.pt holds {len(seeds)} seeds, use 0..{len(seeds) - 1} or 'all'")
    return [k]


if __name__ == "__main__":
    write_random_seeds(Path(SEEDS_FILE))
    print(f"wrote {SEEDS_FILE}")
