"""Random access into memory-mapped arrow data: a ``save_to_disk`` folder or ``.arrow`` files."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import pyarrow as pa

import datasets
from datasets.features.features import require_decoding

from ..spec import Source
from .base import BlockStore, files_fingerprint, select_columns
from .columns import NumpyColumns
from .resolve import resolve_files

__all__ = ["ArrowStore"]

# Rows per block when a random-access source has no natural blocks (arrow): the unit whose order
# is shuffled each epoch before rows are shuffled inside a window.
_ARROW_BLOCK_ROWS = 128


class ArrowStore(BlockStore):
    """Random access into memory-mapped arrow data (``save_to_disk`` folder or ``.arrow`` files).

    Besides ``take`` it has the optional fast path ``take_arrays``: numeric columns gathered as
    numpy from zero-copy views of the memory map (``columns.py``).
    """

    random_access = True
    # A forked worker can keep using the parent's memory maps: no file handle or cache to unshare.
    fork_safe = True
    # A spawned worker maps the files again rather than unpickling the tables.
    portable = False

    def __init__(self, source: Source) -> None:
        if os.path.isdir(source.path):
            ds = datasets.load_from_disk(source.path)
            if isinstance(ds, datasets.DatasetDict):
                if source.split not in ds:
                    raise KeyError(f"{source.path}: split {source.split!r} not found; available: {list(ds)}")
                ds = ds[source.split]
            files = [f["filename"] for f in ds.cache_files]
            parts = [datasets.Dataset.from_file(f) for f in files] if len(files) > 1 else [ds]
            self.where = source.path
        else:
            files = resolve_files(source)
            parts = [datasets.Dataset.from_file(f) for f in files]
            ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            self.where = ",".join(files)
        self.features = select_columns(ds.features, source.columns, self.where)
        self._table = ds.select_columns(list(self.features)).data  # memory-mapped datasets.Table
        self._arrays: Optional[NumpyColumns] = None
        self._rest: Any = None
        self.files = files
        self.file_rows = [p.num_rows for p in parts]
        self.num_rows = ds.num_rows
        if source.num_shards:
            per = -(-self.num_rows // source.num_shards)
        else:
            per = _ARROW_BLOCK_ROWS
        n_full, rest = divmod(self.num_rows, per)
        self.block_lengths = [per] * n_full + ([rest] if rest else [])
        self.fingerprint = files_fingerprint(files, self.file_rows)

    def take(self, rows: np.ndarray) -> pa.Table:
        # datasets' own gather over the memory-mapped record batches: ~20x faster than __getitem__.
        return self._table.fast_gather(rows)

    def take_arrays(self, rows: np.ndarray) -> tuple[Optional[pa.Table], dict[str, np.ndarray]]:
        """The rows as numpy arrays for the columns that have zero-copy views, arrow for the rest."""
        if self._arrays is None:
            plain = [name for name, feature in self.features.items() if not require_decoding(feature)]
            self._arrays = NumpyColumns(self._table.table, plain)
            rest = [name for name in self.features if name not in self._arrays.views]
            self._rest = self._table.select(rest) if rest else None
        arrays = self._arrays.gather(rows)
        return (self._rest.fast_gather(rows) if self._rest is not None else None), arrays

    def describe(self, row: int) -> str:
        for f, n in zip(self.files, self.file_rows):
            if row < n:
                return f"{f} row {row}"
            row -= n
        return f"{self.where} row {row}"
