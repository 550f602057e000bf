"""Random access into parquet files (local, or remote through fsspec), one row group at a time."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasets

from ..spec import Source
from .base import BlockStore, files_fingerprint, gather, select_columns
from .resolve import resolve_files

__all__ = ["ParquetStore"]


class ParquetStore(BlockStore):
    """Random access into local parquet files, one row group at a time.

    Row counts come from the footers. A batch reads the row groups that hold its rows; decoded
    row groups are kept in a small LRU cache sized to the shuffle window, so a window's rows are
    decoded about once per worker.
    """

    random_access = True
    # Another process (a forked or spawned worker) keeps the files and the parsed footers, and opens
    # its own handles and row-group cache (``_local``): it reads no footer and lists no file again.
    fork_safe = True
    portable = True

    def __init__(self, source: Source, *, cache_rows: int = 20_000, files: Optional[list[str]] = None) -> None:
        self.files = files if files is not None else resolve_files(source)
        self.columns = source.columns
        self._storage_options = {k: v for k, v in source.load_kwargs.items() if k == "token"}
        self._handles: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._pid = os.getpid()
        self._footers: dict[int, pq.FileMetaData] = {}
        self.block_lengths: list[int] = []
        self._block_file: list[int] = []
        self._block_rg: list[int] = []
        self.file_rows: list[int] = []
        schema = None
        for i, f in enumerate(self.files):
            meta = self._footers[i] = self._open(i).metadata
            if schema is None:
                schema = self._open(i).schema_arrow
            elif not self._open(i).schema_arrow.remove_metadata().equals(schema.remove_metadata()):
                raise ValueError(f"parquet file {f} has a different schema from {self.files[0]}")
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    self.block_lengths.append(n)
                    self._block_file.append(i)
                    self._block_rg.append(g)
            self.file_rows.append(meta.num_rows)
        self.num_rows = int(sum(self.block_lengths))
        self._block_end = np.cumsum(self.block_lengths, dtype=np.int64)
        self.features = select_columns(datasets.Features.from_arrow_schema(schema), source.columns, self.files[0])
        self.where = ",".join(self.files)
        self.fingerprint = files_fingerprint(self.files, self.file_rows)
        self._cache_rows = cache_rows

    def _local(self) -> None:
        if self._pid != os.getpid():
            self._handles, self._cache, self._pid = {}, OrderedDict(), os.getpid()

    def _open(self, i: int) -> pq.ParquetFile:
        self._local()
        handle = self._handles.get(i)
        if handle is None:
            footer = self._footers.get(i)
            try:
                path = self.files[i]
                if "://" in path:  # hf://, s3://, https://: fsspec reads the footer and row groups by range
                    import fsspec

                    # No read-ahead cache: pyarrow asks for exactly the footer and the column chunks
                    # of a row group, and fsspec's default 5 MB blocks would fetch other readers' groups.
                    options = {"cache_type": "none", **self._storage_options}
                    handle = pq.ParquetFile(fsspec.open(path, "rb", **options).open(), metadata=footer)
                else:
                    handle = pq.ParquetFile(path, metadata=footer)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(f"cannot read parquet file {self.files[i]}: {err}") from err
            self._handles[i] = handle
        return handle

    def __getstate__(self) -> dict:
        # File handles and decoded row groups stay in the process that opened them.
        return {**self.__dict__, "_handles": {}, "_cache": OrderedDict()}

    def _block(self, b: int) -> pa.Table:
        self._local()
        table = self._cache.get(b)
        if table is not None:
            self._cache.move_to_end(b)
            return table
        f, g = self._block_file[b], self._block_rg[b]
        try:
            table = self._open(f).read_row_group(g, columns=self.columns)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"cannot read row group {g} of parquet file {self.files[f]}: {err}") from err
        self._cache[b] = table
        cached = sum(t.num_rows for t in self._cache.values())
        while len(self._cache) > 1 and cached > self._cache_rows:
            _, old = self._cache.popitem(last=False)
            cached -= old.num_rows
        return table

    def take(self, rows: np.ndarray) -> pa.Table:
        blocks = np.searchsorted(self._block_end, rows, side="right")
        local = rows - (self._block_end[blocks] - np.asarray(self.block_lengths, dtype=np.int64)[blocks])
        return gather(blocks, lambda b, sel: self._block(b).take(pa.array(local[sel])))

    def describe(self, row: int) -> str:
        b = int(np.searchsorted(self._block_end, row, side="right"))
        f = self._block_file[b]
        before = sum(self.file_rows[:f])
        return f"{self.files[f]} row {row - before}"
