"""Training and test data as the API takes them: a pair (inputs, targets) of tensors or arrays, or a torch
`Dataset` of (input, target) items, turned into the two tensors every method computes on."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import TDAError

#: what `train=` and `test=` accept
Data = tuple[Any, Any] | Dataset


def _tensor(value: Any) -> torch.Tensor:
    t = torch.as_tensor(value)
    # float64 arrays (numpy's default) become float32, as torch's own parameters are
    return t.float() if t.dtype == torch.float64 and isinstance(value, np.ndarray) else t


def as_tensors(data: Data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, ...], targets [B, ...]) of `data`; a one-line error naming `what` when it is neither form."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = _tensor(data[0]), _tensor(data[1])
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        try:
            items = [data[i] for i in range(len(data))]
            x = torch.stack([_tensor(item[0]) for item in items])
            y = torch.stack([_tensor(item[1]) for item in items])
        except Exception as e:  # noqa: BLE001 - the user's dataset
            raise TDAError(f"{what}: a dataset's items must be (input, target) pairs of equal shapes "
                           f"({type(e).__name__}: {e})")
    else:
        raise TDAError(f"{what} must be a pair (inputs, targets) of tensors or arrays, or a torch Dataset of "
                       f"(input, target) items, got {type(data).__name__}")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise TDAError(f"{what}: inputs and targets must hold one row per sample, got shapes {tuple(x.shape)} and "
                       f"{tuple(y.shape)}")
    return x, y
