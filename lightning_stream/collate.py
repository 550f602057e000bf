"""Turn a processed batch (``dict[str, list]``) into tensors, column by column.

Working on columns avoids building a dict per row. Numbers become 1-d tensors, equal-length
lists and arrays are stacked, anything else (strings, images, ragged lists the user wants to
pad later) stays a list only when it is not numeric: a ragged numeric column is an error that
names the column, because silently keeping it as a list would break the model far from the
cause.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["default_collate", "collate_rows"]


def _is_number(x: Any) -> bool:
    return isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, (str, bytes))


def _dtype(x: Any) -> Any:
    # torch's conventions: bools stay bools, integers become int64, floats float32.
    if isinstance(x, (bool, np.bool_)):
        return np.bool_
    if isinstance(x, (numbers.Integral, np.integer)):
        return np.int64
    return np.float32


def _array_dtype(dtype: np.dtype) -> np.dtype:
    # datasets' torch format: ids stored as int32 arrive as int64 (what embeddings and losses take),
    # float64 as float32; narrow types (uint8 pixels, int8 masks, float16) keep their width.
    if dtype.kind in "iu" and dtype.itemsize >= 4:
        return np.dtype(np.int64)
    if dtype.kind == "f" and dtype.itemsize > 4:
        return np.dtype(np.float32)
    return dtype


def _collate_column(name: str, values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.dtype != object:  # a whole column (batch_format="numpy")
        # Always a copy: a column can be a read-only view of arrow memory or alias another column.
        return torch.from_numpy(np.array(values, dtype=_array_dtype(values.dtype)))
    if isinstance(values, torch.Tensor):
        return values
    if not len(values):
        return values
    first = values[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"column {name!r}: cannot stack tensors of shapes {sorted(shapes)[:4]}; pad them or pass collate_fn")
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise ValueError(f"column {name!r}: cannot stack arrays of shapes {sorted(shapes)[:4]}; pad them or pass collate_fn")
        return torch.from_numpy(np.stack(values).astype(_array_dtype(first.dtype), copy=False))
    if _is_number(first):
        return torch.from_numpy(np.array(values, dtype=_dtype(first)))
    if isinstance(first, (list, tuple)) and (not first or _is_number(first[0]) or isinstance(first[0], (list, tuple))):
        leaf = first
        while isinstance(leaf, (list, tuple)) and leaf:
            leaf = leaf[0]
        try:
            # An explicit dtype is about twice as fast as letting numpy infer one.
            return torch.from_numpy(np.array(values, dtype=_dtype(leaf) if _is_number(leaf) else None))
        except ValueError:
            lengths = sorted({len(v) for v in values})
            raise ValueError(
                f"column {name!r} is ragged (row lengths {lengths[:6]}{'...' if len(lengths) > 6 else ''}); "
                "pad it in the transform or pass a collate_fn that pads"
            ) from None
    return values


def default_collate(batch: dict[str, list]) -> dict[str, Any]:
    """Collate a column batch into tensors where the values are numeric.

    Example:
        >>> default_collate({"x": [1, 2], "ids": [[1, 2], [3, 4]], "text": ["a", "b"]})["ids"].shape
        torch.Size([2, 2])
    """
    return {k: _collate_column(k, v) for k, v in batch.items()}


def collate_rows(batch: dict[str, list], collate_fn: Optional[Callable[[list[dict]], Any]]) -> Any:
    """Apply ``collate_fn`` (torch convention: a list of row dicts) or :func:`default_collate`."""
    if collate_fn is None:
        return default_collate(batch)
    keys = list(batch)
    rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
    try:
        return collate_fn(rows)
    except KeyError as err:
        name = getattr(collate_fn, "__qualname__", type(collate_fn).__name__)
        raise KeyError(f"collate_fn {name}: column {err.args[0]!r} not found in the batch (columns: {keys})") from err
