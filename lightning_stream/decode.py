"""Arrow rows to a column batch: what a transform receives.

A store hands a batch's rows as arrow columns (and, where it has them, numeric columns already as
numpy views: ``stores/columns.py``). Decoding turns them into the ``dict[str, list]`` that
``datasets.map(batched=True)`` functions expect: each column in the source's ``Features`` order,
features that need decoding (``Image``, ``Audio``) decoded by ``datasets`` itself, and
``batch_format="numpy"`` giving numpy arrays without a Python object per value where arrow allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from datasets.features.features import decode_nested_example

from ._compat import needs_decoding
from .stores.columns import is_list, numpy_view

__all__ = ["Rows", "concat", "decode"]


@dataclass
class Rows:
    """A batch's rows before decoding: arrow columns and, where the store has them, numpy ones."""

    table: pa.Table | None
    arrays: dict[str, np.ndarray]
    num_rows: int

    @classmethod
    def of(cls, table: pa.Table) -> Rows:
        return cls(table, {}, table.num_rows)

    @classmethod
    def empty(cls) -> Rows:
        return cls(None, {}, 0)

    @property
    def num_columns(self) -> int:
        return (self.table.num_columns if self.table is not None else 0) + len(self.arrays)

    def row(self, i: int) -> Rows:
        table = self.table.slice(i, 1) if self.table is not None else None
        return Rows(table, {k: v[i : i + 1] for k, v in self.arrays.items()}, 1)


def decode(rows: Rows, features: Any, batch_format: Literal["python", "numpy"] = "python") -> dict[str, Any]:
    """The columns of ``rows`` as a batch: ``features`` (``datasets.Features``) first, in order."""
    numpy = batch_format == "numpy"
    columns = dict(zip(rows.table.column_names, rows.table.columns)) if rows.table is not None else {}
    batch: dict[str, Any] = {}
    for name in [*features, *(c for c in columns if c not in features)]:
        if name in rows.arrays:
            batch[name] = rows.arrays[name] if numpy else rows.arrays[name].tolist()
            continue
        column = columns[name]
        feature = features.get(name)
        if feature is None or not needs_decoding(feature):
            batch[name] = _numpy_column(column) if numpy else column.to_pylist()
            continue
        try:
            batch[name] = [decode_nested_example(feature, v) if v is not None else None for v in column.to_pylist()]
        except Exception as err:
            raise ValueError(f"column {name!r}: cannot decode ({type(err).__name__}: {err})") from err
    return batch


def concat(parts: list[Any]) -> Any:
    """One column from the same column of several batches (numpy stays numpy)."""
    if parts and all(isinstance(p, np.ndarray) and p.dtype != object for p in parts):
        return np.concatenate(parts)
    return [v for part in parts for v in part]


def _numpy_column(column: pa.ChunkedArray) -> Any:
    """A column as numpy without a Python object per value where arrow allows it."""
    array = column.combine_chunks()
    view = numpy_view(array)  # numbers, equal-length numeric lists
    if view is not None:
        return view
    if is_list(array.type):
        return [np.asarray(v) if v is not None else None for v in array.to_pylist()]
    if array.null_count == 0 and pa.types.is_boolean(array.type):
        return array.to_numpy(zero_copy_only=False)
    return array.to_pylist()
