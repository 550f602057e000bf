"""Random access into parquet files (local, or remote through fsspec), one row group at a time.

Remote row groups are fetched ahead of use: the worker tells the store the rows of its next
batches (:meth:`ParquetStore.read_ahead`), and a small thread pool keeps up to
``Remote.read_ahead`` row-group reads in flight, each a retried range request
(``stores/remote.py``); a batch then waits only for what is not already there.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasets

from ..spec import Source
from .base import BlockStore, files_fingerprint, gather, select_columns
from .remote import RemoteFile, Span, fetch, is_remote, open_remote, row_group_span
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
        options = source.load_kwargs
        self._storage_options = {**options.get("storage_options", {}), **({"token": options["token"]} if "token" in options else {})}
        self.remote = source.remote
        self._handles: dict[int, pq.ParquetFile] = {}
        self._remotes: dict[int, RemoteFile] = {}
        self._lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._ahead: dict[int, Future] = {}
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
        self._remote = any(is_remote(f) for f in self.files)

    def _local(self) -> None:
        if self._pid != os.getpid():
            self._handles, self._cache, self._pid = {}, OrderedDict(), os.getpid()
            self._remotes, self._lock, self._pool, self._ahead = {}, threading.Lock(), None, {}

    def _open(self, i: int) -> pq.ParquetFile:
        self._local()
        handle = self._handles.get(i)
        if handle is None:
            footer = self._footers.get(i)
            try:
                path = self.files[i]
                if is_remote(path):  # the footer, by exact retried ranges (row groups: ``_read``)
                    handle = pq.ParquetFile(self._remote_file(i), metadata=footer)
                else:
                    handle = pq.ParquetFile(path, metadata=footer)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(f"cannot read parquet file {self.files[i]}: {err}") from err
            self._handles[i] = handle
        return handle

    def __getstate__(self) -> dict:
        # File handles, threads and decoded row groups stay in the process that opened them.
        return {**self.__dict__, "_handles": {}, "_cache": OrderedDict(), "_remotes": {}, "_lock": None, "_pool": None, "_ahead": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, b: int) -> pa.Table:
        f, g = self._block_file[b], self._block_rg[b]
        try:
            if not is_remote(self.files[f]):
                return self._open(f).read_row_group(g, columns=self.columns)
            # One range request for the row group's column chunks, then pyarrow reads them from memory.
            remote = self._remote_file(f)
            start, end = row_group_span(self._footers[f], g, self.columns)
            span = Span(fetch(remote.fs, remote.path, start, end, self.remote), start, remote.size, self.files[f])
            return pq.ParquetFile(span, metadata=self._footers[f]).read_row_group(g, columns=self.columns)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"cannot read row group {g} of parquet file {self.files[f]}: {err}") from err

    def _remote_file(self, f: int) -> RemoteFile:
        with self._lock:  # read-ahead threads share one file object per file: its fs is thread-safe
            remote = self._remotes.get(f)
            if remote is None:
                remote = self._remotes[f] = open_remote(self.files[f], self.remote, self._storage_options)
            return remote

    @property
    def reads_ahead(self) -> bool:
        """Remote files are fetched ahead of use; local ones are read when needed (the page cache and
        the disk's own read-ahead serve them)."""
        return self._remote and self.remote.read_ahead > 0

    @property
    def read_ahead_rows(self) -> int:
        """Rows of the row groups kept in flight at once."""
        return self.remote.read_ahead * self.num_rows // max(1, len(self.block_lengths))

    def read_ahead(self, rows: Iterable[np.ndarray]) -> None:
        """Start fetching the remote row groups that hold ``rows`` (the next batches' rows, in order)."""
        self._local()
        limit = self.remote.read_ahead
        if not self.reads_ahead:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="lightning_stream-read-ahead")
        for batch in rows:
            for b in dict.fromkeys(np.searchsorted(self._block_end, batch, side="right").tolist()):
                if len(self._ahead) >= limit:
                    return
                if b not in self._cache and b not in self._ahead:
                    self._ahead[b] = self._pool.submit(self._read, b)

    def _block(self, b: int) -> pa.Table:
        self._local()
        table = self._cache.get(b)
        if table is not None:
            self._cache.move_to_end(b)
            return table
        ahead = self._ahead.pop(b, None)
        table = ahead.result() if ahead is not None else self._read(b)
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
