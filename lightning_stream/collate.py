"""Turn a processed batch (``dict[str, list]``) into tensors, column by column.

Working on columns avoids building a dict per row. Numbers become 1-d tensors, equal-length
lists and arrays are stacked, anything else (strings, images, ragged lists the user wants to
pad later) stays a list only when it is not numeric: a ragged numeric column is an error that
names the column, because silently keeping it as a list would break the model far from the
cause.

Nulls. A tensor holds no null, and none is invented: ``None`` in a numeric column (a number,
a list of numbers, an array or a tensor per row; ``None`` as a row or inside one) is an error
that names the column and the row of the batch, never a NaN, a ``False`` or a Python list in
the batch. Fill the nulls in a transform (a value, plus a mask column if the model must know
which were missing), drop their rows with a filter, or pass a ``collate_fn`` that handles
``None``. A string among numbers (``'n/a'``) is refused the same way. A column whose values
are all ``None`` in a batch has no kind to tell and stays a list; in a column of strings (or
other objects) ``None`` stays ``None``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .transforms import describe_callable

__all__ = ["default_collate", "collate_rows"]


def _is_number(x: Any) -> bool:
    return isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, (str, bytes))


def _dtype(x: Any) -> Any:
    # torch's conventions: integers become int64, floats float32. Bools are left to numpy, which
    # keeps them bool only when every value is one (a given bool dtype would make None False).
    if isinstance(x, (bool, np.bool_)):
        return None
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


def _leaf(x: Any) -> Any:
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    return x


def _is_numeric(x: Any) -> bool:
    """Whether a row's value makes a numeric column: a number, a tensor, an array, or lists of numbers."""
    if isinstance(x, torch.Tensor) or (isinstance(x, np.ndarray) and x.dtype != object):
        return True
    if isinstance(x, (list, tuple)):
        leaf = _leaf(x)
        return _is_number(leaf) or isinstance(leaf, (list, tuple))  # numbers, or empty lists
    return _is_number(x)


def _tensor(values: list, first: Any) -> torch.Tensor | None:
    """The column as one tensor, or None when it is not numeric; raises when it cannot be stacked."""
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        if len({v.shape for v in values}) > 1:
            raise ValueError("shapes differ")
        if any(v.dtype == object for v in values):  # a list with a null inside: numpy would make it NaN
            raise TypeError("an array of objects")
        return torch.from_numpy(np.stack(values).astype(_array_dtype(first.dtype), copy=False))
    if not _is_numeric(first):
        return None
    leaf = _leaf(first)
    # An explicit dtype is about twice as fast as letting numpy infer one.
    array = np.array(values, dtype=_dtype(leaf) if _is_number(leaf) else None)
    if array.dtype == object:
        raise TypeError("not all numbers")
    return torch.from_numpy(array)


def _collate_column(name: str, values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.dtype != object:  # a whole column (batch_format="numpy")
        # Always a copy: a column can be a read-only view of arrow memory or alias another column.
        return torch.from_numpy(np.array(values, dtype=_array_dtype(values.dtype)))
    if isinstance(values, torch.Tensor):
        return values
    if not len(values):
        return values
    first = values[0]
    if first is None or isinstance(first, (str, bytes)):
        _check_not_numeric(name, values)
        return values
    try:
        tensor = _tensor(values, first)
    except (TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise _why_not(name, values, err) from None
    if tensor is None:
        return values
    if tensor.is_floating_point() and _is_number(_leaf(first)) and bool(torch.isnan(tensor).any()):
        at = _null_at(values)  # numpy reads None as NaN in a float column
        if at is not None:
            raise _null_error(name, values, at)
    return tensor


def _check_not_numeric(name: str, values: list) -> None:
    """A column that starts with a null or a string: its other values must not be numeric."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds <= {str} or kinds <= {bytes}:
        return  # all strings (or all None): the common case, checked fast
    given = [v for v in values if v is not None]
    if _is_numeric(given[0]):  # a numeric column with a null first
        raise _null_error(name, values, _null_at(values))
    if isinstance(given[0], (str, bytes)) and any(_is_numeric(v) for v in given):
        row, text = next((i, v) for i, v in enumerate(values) if isinstance(v, (str, bytes)))
        raise _not_a_number(name, row, text)


def _why_not(name: str, values: list, err: Exception) -> ValueError:
    """Why a numeric column makes no tensor: a null, a string, or rows of different shapes."""
    at = _null_at(values)
    if at is not None:
        return _null_error(name, values, at)
    for i, v in enumerate(values):
        leaf = _leaf(v) if isinstance(v, (list, tuple)) else v
        if isinstance(leaf, (str, bytes)):
            return _not_a_number(name, i, leaf)
    shapes = sorted({_shape(v) for v in values}, key=str)
    if len(shapes) > 1:
        if isinstance(values[0], (torch.Tensor, np.ndarray)):
            kind = "tensors" if isinstance(values[0], torch.Tensor) else "arrays"
            return ValueError(
                f"column {name!r}: cannot stack {kind} of shapes {shapes[:4]}; pad them or pass collate_fn"
            )
        lengths = sorted({len(v) for v in values if isinstance(v, (list, tuple))})
        return ValueError(
            f"column {name!r} is ragged (row lengths {lengths[:6]}{'...' if len(lengths) > 6 else ''}); "
            "pad it in the transform or pass a collate_fn that pads"
        )
    return ValueError(f"column {name!r}: cannot make a tensor of it ({type(err).__name__}: {err}); pass a collate_fn")


def _shape(v: Any) -> Any:
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return tuple(v.shape)
    if isinstance(v, (list, tuple)):
        return (len(v), *sorted({_shape(x) for x in v}, key=str)[:1])
    return ()


def _null_in(value: Any) -> tuple[int, ...] | None:
    """Where ``value`` holds a None: ``()`` for the value itself, else the index path inside it."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        for j, x in enumerate(value):
            inner = _null_in(x)
            if inner is not None:
                return (j, *inner)
    return None


def _null_at(values: list) -> tuple[int, ...] | None:
    """The first null of a column: ``(row, *path inside the row)``, or None."""
    for i, v in enumerate(values):
        inner = _null_in(v)
        if inner is not None:
            return (i, *inner)
    return None


def _null_error(name: str, values: list, at: tuple[int, ...]) -> ValueError:
    rows = sum(_null_in(v) is not None for v in values)
    where = f"row {at[0]}" if len(at) == 1 else f"row {at[0]} (at index {list(at[1:])})"
    return ValueError(
        f"column {name!r} is null (None) in {rows} of the batch's {len(values)} rows, first in {where}; a tensor holds "
        "no null: fill it in a transform (a value, plus a mask column if the model must know), drop such rows with a "
        "filter, or pass a collate_fn that handles None"
    )


def _not_a_number(name: str, row: int, value: Any) -> ValueError:
    return ValueError(
        f"column {name!r} holds {value!r} ({type(value).__name__}) in row {row} of the batch, among numbers; "
        "convert it in a transform (a number, plus a mask column for missing values) or drop such rows with a filter"
    )


def default_collate(batch: dict[str, list]) -> dict[str, Any]:
    """Collate a column batch into tensors where the values are numeric.

    Example:
        >>> default_collate({"x": [1, 2], "ids": [[1, 2], [3, 4]], "text": ["a", "b"]})["ids"].shape
        torch.Size([2, 2])
    """
    return {k: _collate_column(k, v) for k, v in batch.items()}


def collate_rows(batch: dict[str, list], collate_fn: Callable[[list[dict]], Any] | None) -> Any:
    """Apply ``collate_fn`` (torch convention: a list of row dicts) or :func:`default_collate`."""
    if collate_fn is None:
        return default_collate(batch)
    keys = list(batch)
    rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
    try:
        return collate_fn(rows)
    except KeyError as err:
        raise KeyError(
            f"collate_fn {describe_callable(collate_fn)}: column {err.args[0]!r} not found in the batch (columns: {keys})"
        ) from err
    except Exception as err:
        # The user's exception, as itself (its type and traceback), with the function named.
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(
                f"raised by collate_fn {describe_callable(collate_fn)} on a batch of {len(rows)} rows (columns: {keys})"
            )
        raise
