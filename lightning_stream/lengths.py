"""Every row's length (and image count) before the transform: what token-budget steps are planned from.

``length`` is a column of the raw rows or a function of a raw row:

- a column (``"num_tokens"``; a list column such as pre-tokenized ``"input_ids"`` counts its
  items): only that column is read, once, when the train loader is built. For parquet this
  reads one column chunk per row group (a few MB for 500k rows); for a ``datasets`` object it
  is a view of memory-mapped arrow.
- a function of a decoded raw row (or its import path, ``"module.function"``, as YAML names
  it), returning the row's tokens, or ``(tokens, images)`` for the image budget
  (``max_images``; :class:`TokensAndImages` reads both from columns): it runs once over every row (a one-pass length index: the cost
  of one epoch's reads, without the transform). Keep it cheap: a stored count, the text's
  length, ``len(row["images"])``; image columns arrive as PIL images, which read only their
  header until their pixels are used.

The lengths live in the main process and travel to the workers with the dataset (8 bytes a row:
4 MB for 500k rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .decode import decode
from .plans import take
from .spec import Source
from .transforms import resolve_callable

__all__ = ["Length", "RowLengths", "TokensAndImages", "measure"]

Length = str | Callable[[dict[str, Any]], Any]
_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class RowLengths:
    """``tokens[i]`` (and ``images[i]``, or ``None``) of source row ``i``."""

    tokens: np.ndarray
    images: np.ndarray | None = None


def _name(length: Length) -> str:
    return length if isinstance(length, str) else getattr(length, "__qualname__", repr(length))


def measure(
    store: Any, length: Length, *, source: Any = None, open_store: Callable[..., Any] | None = None
) -> RowLengths:
    """The lengths of every row of ``store`` (random access), as ``length`` says.

    ``source`` and ``open_store``: for a column of a :class:`Source`, a store that reads only that
    column (the others are not read).
    """
    n = store.num_rows
    if isinstance(length, str) and "." in length and length not in store.features:
        length = resolve_callable(length)  # "module.function", as YAML names a function
    if isinstance(length, str):
        if length not in store.features and length not in _column_names(store):
            raise ValueError(
                f"length={length!r}: {store.where} has no column {length!r} (columns: {sorted(store.features)}); "
                "name a column of the raw rows (before the transform) or pass a function of a row"
            )
        if isinstance(source, Source) and open_store is not None:
            store = open_store(dataclasses.replace(source, columns=[length]))
        tokens = np.empty(n, dtype=np.int64)
        for a in range(0, n, _CHUNK):
            rows = take(store, np.arange(a, min(n, a + _CHUNK)))
            tokens[a : a + rows.num_rows] = _column_lengths(rows, length, store, a)
        return RowLengths(tokens)
    if not callable(length):
        raise TypeError(f"length must be a column name or a function of a row, got {type(length).__name__}")
    tokens = np.empty(n, dtype=np.int64)
    images: np.ndarray | None = None
    for a in range(0, n, _CHUNK):
        rows = take(store, np.arange(a, min(n, a + _CHUNK)))
        batch = store.chain(rows.table) if store.chain is not None else decode(rows, store.features)
        names = list(batch)
        for i in range(rows.num_rows):
            row = {k: batch[k][i] for k in names}
            try:
                value = length(row)
            except Exception as err:
                raise ValueError(
                    f"length function {_name(length)} failed on {store.describe(a + i)}: {type(err).__name__}: {err}"
                ) from err
            t, k = _parse(value, length, store.describe(a + i))
            tokens[a + i] = t
            if k is not None:
                if images is None:
                    images = np.zeros(n, dtype=np.int64)
                images[a + i] = k
    return RowLengths(tokens, images)


class TokensAndImages:
    """``length`` for token and image budgets from two columns: ``(row[tokens], len(row[images]))``.

    A class, so that a YAML config can name it (``class_path``) with its columns.

    Example:
        >>> TokensAndImages("num_tokens", "images")({"num_tokens": 90, "images": [None, None]})
        (90, 2)
    """

    def __init__(self, tokens: str = "num_tokens", images: str = "images") -> None:
        self.tokens, self.images = tokens, images

    def __call__(self, row: dict[str, Any]) -> tuple[int, int]:
        images = row.get(self.images)
        return int(row[self.tokens]), 0 if images is None else len(images)

    def __repr__(self) -> str:
        return f"TokensAndImages(tokens={self.tokens!r}, images={self.images!r})"


def _column_names(store: Any) -> list[str]:
    return list(getattr(store, "column_names", []) or [])


def _column_lengths(rows: Any, name: str, store: Any, first: int) -> np.ndarray:
    if name in rows.arrays:
        values = np.asarray(rows.arrays[name])
        return values if values.ndim == 1 else np.full(len(values), values.shape[1])
    column = rows.table.column(name)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        counts = pc.list_value_length(column)
    elif pa.types.is_integer(column.type):
        counts = column
    else:
        raise ValueError(
            f"length={name!r}: column {name!r} of {store.where} holds {column.type}, not token counts (integers) "
            "or token lists; pass a function of a row instead, e.g. length=lambda row: len(row['text']) // 4"
        )
    if counts.null_count:
        at = int(np.flatnonzero(np.asarray(pc.is_null(counts)))[0])
        raise ValueError(f"length={name!r}: {store.describe(first + at)} has no value in column {name!r}")
    return np.asarray(counts.to_numpy(zero_copy_only=False), dtype=np.int64)


def _parse(value: Any, length: Any, where: str) -> tuple[int, int | None]:
    if isinstance(value, tuple) and len(value) == 2:
        t, k = value
    else:
        t, k = value, None
    ok = isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 0
    ok = ok and (k is None or (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0))
    if not ok:
        raise TypeError(
            f"length function {_name(length)} returned {value!r} for {where}; it must return the row's tokens (an int "
            ">= 0) or (tokens, images)"
        )
    return int(t), None if k is None else int(k)
