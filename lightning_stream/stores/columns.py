"""Numeric columns of memory-mapped arrow data, gathered as numpy without going through arrow.

A shuffled batch is a handful of rows scattered over a window; gathering them with arrow builds
one slice per row and then combines the chunks (~0.1 ms per column at batch 32), and turning the
result into numpy costs as much again. A numeric column, or a column of equal-length numeric
lists (token ids), is instead a 1-d or 2-d numpy view of each record batch's buffer in the memory
map: zero-copy, so holding every view costs no memory. A gather indexes the views row by row
(a shuffled batch touches as many 128-row blocks as it has rows) or, for contiguous rows, copies
one slice.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["NumpyColumns", "is_list", "numpy_view"]


def _is_number(kind: pa.DataType) -> bool:
    # Booleans are bit-packed in arrow: no zero-copy view.
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def numpy_view(array: pa.Array) -> np.ndarray | None:
    """A zero-copy numpy view of ``array`` (numbers, or lists of one length), or None."""
    kind = array.type
    if array.null_count:
        return None
    if _is_number(kind):
        return array.to_numpy(zero_copy_only=True)
    if not is_list(kind):
        return None
    values = array.flatten()
    if values.null_count or not _is_number(values.type):
        return None
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = np.diff(array.offsets.to_numpy())
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and not (lengths == width).all():
            return None
    return values.to_numpy(zero_copy_only=True).reshape(len(array), width)


class NumpyColumns:
    """Views of the columns of ``table`` that have one, per record batch."""

    def __init__(self, table: pa.Table, candidates: list[str]) -> None:
        batches = [b for b in table.to_batches() if b.num_rows]
        self.offsets = np.cumsum([0] + [b.num_rows for b in batches], dtype=np.int64)
        self.views: dict[str, list[np.ndarray]] = {}
        for name in candidates:
            views = [numpy_view(b.column(name)) for b in batches]
            if views and all(v is not None for v in views) and len({v.shape[1:] for v in views}) == 1:
                self.views[name] = views  # type: ignore[assignment]

    @property
    def names(self) -> list[str]:
        return list(self.views)

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The rows ``rows`` (in that order) of each column, as fresh writable arrays."""
        n = len(rows)
        if n and int(rows[-1]) - int(rows[0]) == n - 1 and (n < 3 or (rows[1:] > rows[:-1]).all()):
            # Contiguous (an unshuffled batch): a slice of one record batch, or of a few.
            first, last = (int(x) for x in np.searchsorted(self.offsets, rows[[0, -1]], side="right") - 1)
            lo = int(rows[0]) - int(self.offsets[first])
            if first == last:
                return {name: views[first][lo : lo + n].copy() for name, views in self.views.items()}
        batch = np.searchsorted(self.offsets, rows, side="right") - 1
        local = rows - self.offsets[batch]
        # Shuffled rows come from many 128-row blocks: one indexing per row beats grouping them.
        pairs = list(zip(batch.tolist(), local.tolist()))
        return {name: np.array([views[b][i] for b, i in pairs]) for name, views in self.views.items()}
