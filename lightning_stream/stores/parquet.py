"""Random access into parquet files (local, or remote through fsspec), one row group at a time.

Remote row groups are fetched ahead of use: the worker tells the store the rows of its next
batches (:meth:`ParquetStore.read_ahead`), and the store keeps up to ``Remote.read_ahead`` of
their row groups fetched or in flight, each request retried (``stores/remote.py``); a batch then
waits only for what is not already there. Row groups next to each other in a file share one
range request, up to ``Remote.max_request_bytes``. The bytes fetched ahead are bounded too (64
MiB, or the compressed size of the two shuffle windows the decoded cache holds when that is
more), so files of huge row groups cannot fill the memory. A row group is decoded by the reader,
when its batch needs it. With ``Remote.cache_dir``, row groups once fetched are kept on the
node's disk (``stores/block_cache.py``) and read from there by any process of the node.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..spec import Source
from .base import BlockStore, files_fingerprint, footer_digest, gather, select_columns
from .block_cache import BlockCache
from .culprits import schema_difference
from .remote import RemoteFile, Span, fetch, is_remote, open_remote, row_group_span
from .resolve import resolve_files

__all__ = ["ParquetStore"]

# Footers of remote files read at once when a store opens (each a size and a tail request).
_OPENING_THREADS = 32
# The least of the bytes a reader may hold fetched ahead (more when two shuffle windows weigh more).
_AHEAD_BYTES = 64 << 20
# The end of a remote file fetched with its size, for its footer: what pyarrow reads first (64 KiB),
# or more once a footer of the store has shown to be larger (its files are alike, as a rule).
_TAIL_BYTES = 64 << 10


class ParquetStore(BlockStore):
    """Random access into local parquet files, one row group at a time.

    Row counts come from the footers. A batch reads the row groups that hold its rows; decoded
    row groups are kept in a small LRU cache sized to the shuffle windows a reader holds, so a
    window's rows are decoded about once per worker. ``cache_rows`` counts those windows' rows
    (``cache_windows`` of them); rows are held in whole row groups, and a window's rows may lie in
    one more row group than they fill, so the cache holds a largest row group more per window:
    row groups larger than the window are then decoded once, not once per batch.
    """

    random_access = True
    # Another process (a forked or spawned worker) keeps the files and the parsed footers, and opens
    # its own handles and row-group cache (``_local``): it reads no footer and lists no file again.
    fork_safe = True
    portable = True

    def __init__(
        self, source: Source, *, cache_rows: int = 20_000, cache_windows: int = 2, files: list[str] | None = None
    ) -> None:
        self.files = files if files is not None else resolve_files(source)
        self.columns = source.columns
        options = source.load_kwargs
        self._storage_options = {
            **options.get("storage_options", {}),
            **({"token": options["token"]} if "token" in options else {}),
        }
        self.remote = source.remote
        self._remote = any(is_remote(f) for f in self.files)
        self._handles: dict[int, pq.ParquetFile] = {}
        self._remotes: dict[int, RemoteFile] = {}
        self._sizes: dict[int, int] = {}  # of remote files, asked once here and handed to the workers
        self._lock = threading.Lock()
        self._ahead: dict[int, tuple[Future, int]] = {}  # row group -> (its request's bytes, where they start)
        self._ahead_bytes = 0
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._pid = os.getpid()
        self._footers: dict[int, pq.FileMetaData] = {}
        self._tail = _TAIL_BYTES
        self.block_lengths: list[int] = []
        self._block_file: list[int] = []
        self._block_rg: list[int] = []
        self.file_rows: list[int] = []
        handles = self._open_all()
        schema = handles[0].schema_arrow
        for i, (f, handle) in enumerate(zip(self.files, handles)):
            meta = self._footers[i] = handle.metadata
            if not handle.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
                difference = schema_difference(schema, handle.schema_arrow, self.files[0], f)
                raise ValueError(f"parquet file {f} has a different schema from {self.files[0]}: {difference}")
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    self.block_lengths.append(n)
                    self._block_file.append(i)
                    self._block_rg.append(g)
            self.file_rows.append(meta.num_rows)
        self.num_rows = int(sum(self.block_lengths))
        if not self.num_rows:  # named here: later it is only an epoch of 0 steps
            raise ValueError(
                f"parquet file(s) {', '.join(self.files)}: 0 rows, nothing to read (written with a schema and no row?)"
            )
        self._block_end = np.cumsum(self.block_lengths, dtype=np.int64)
        self.features = select_columns(datasets.Features.from_arrow_schema(schema), source.columns, self.files[0])
        self.where = ",".join(self.files)
        self._digests = [footer_digest(self._footers[i]) for i in range(len(self.files))]
        self.fingerprint = files_fingerprint(self.files, self.file_rows, self._digests)
        self._disk = (
            BlockCache(self.remote.cache_dir, self.remote.cache_bytes)
            if self._remote and self.remote.cache_dir
            else None
        )
        self._from_disk: set[int] = set()  # row groups in ``_ahead`` that came from the disk cache
        self._cache_rows = cache_rows + cache_windows * max(self.block_lengths)
        self._spans: dict[int, tuple[int, int]] = {}
        # Bytes fetched ahead at most: 64 MiB, or the compressed size of the rows the decoded cache
        # holds (two shuffle windows) when that is more.
        per_row = sum(self._sizes.values()) / max(1, self.num_rows)
        self._ahead_budget = max(_AHEAD_BYTES, int(cache_rows * per_row))
        self._request_bytes = self.remote.max_request_bytes or self._ahead_budget // 4

    def _local(self) -> None:
        if self._pid != os.getpid():
            self._handles, self._cache, self._pid = {}, OrderedDict(), os.getpid()
            self._remotes, self._lock, self._ahead, self._ahead_bytes, self._from_disk = (
                {},
                threading.Lock(),
                {},
                0,
                set(),
            )

    def _open_all(self) -> list[pq.ParquetFile]:
        """Every file's handle (and footer); remote files several at once: each costs round trips."""
        if not self._remote or len(self.files) == 1:
            return [self._open(i) for i in range(len(self.files))]
        with ThreadPoolExecutor(
            min(_OPENING_THREADS, len(self.files)), thread_name_prefix="lightning_stream-footers"
        ) as pool:
            return list(pool.map(self._open, range(len(self.files))))

    def _open(self, i: int) -> pq.ParquetFile:
        self._local()
        handle = self._handles.get(i)
        if handle is None:
            footer = self._footers.get(i)
            try:
                path = self.files[i]
                if is_remote(path):  # the footer, by exact retried ranges (row groups: ``_read``)
                    remote = self._remote_file(i)
                    handle = pq.ParquetFile(remote, metadata=footer)
                    if remote.tail:  # read: no longer worth its memory
                        remote.tail = b""
                        self._tail = max(self._tail, 5 * (handle.metadata.serialized_size + 8) // 4)
                else:
                    handle = pq.ParquetFile(path, metadata=footer)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(f"cannot read parquet file {self.files[i]}: {err}") from err
            self._handles[i] = handle
        return handle

    def __getstate__(self) -> dict:
        # File handles, requests in flight and decoded row groups stay in the process that opened them.
        return {
            **self.__dict__,
            "_handles": {},
            "_cache": OrderedDict(),
            "_remotes": {},
            "_lock": None,
            "_ahead": {},
            "_ahead_bytes": 0,
            "_from_disk": set(),
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _span(self, b: int) -> tuple[int, int]:
        """Byte range of row group ``b``'s column chunks in its file."""
        span = self._spans.get(b)
        if span is None:
            span = self._spans[b] = row_group_span(self._footers[self._block_file[b]], self._block_rg[b], self.columns)
        return span

    def _read(self, b: int, ahead: tuple[Future, int] | None = None) -> pa.Table:
        """Row group ``b``, decoded; from the bytes fetched ahead (``ahead``) when there are some."""
        f, g = self._block_file[b], self._block_rg[b]
        try:
            if not is_remote(self.files[f]):
                return self._open(f).read_row_group(g, columns=self.columns)
            # One range request for the row group's column chunks, then pyarrow reads them from memory.
            remote = self._remote_file(f)
            if ahead is not None:
                data, start = ahead[0].result(), ahead[1]
                fetched = b not in self._from_disk
            else:
                start, end = self._span(b)
                data = self._from_cache(b)
                fetched = data is None
                if fetched:
                    data = fetch(remote.fs, remote.path, start, end, self.remote)
            if fetched:
                self._to_cache(b, data, start)
            self._from_disk.discard(b)
            span = Span(data, start, remote.size, self.files[f])
            return pq.ParquetFile(span, metadata=self._footers[f]).read_row_group(g, columns=self.columns)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"cannot read row group {g} of parquet file {self.files[f]}: {err}") from err

    def _cache_key(self, b: int) -> str:
        start, end = self._span(b)
        f = self._block_file[b]
        return self._disk.key(self.files[f], self._digests[f], start, end)

    def _from_cache(self, b: int) -> bytes | None:
        """Row group ``b``'s bytes from the node's disk cache, if it is on and holds them."""
        if self._disk is None:
            return None
        start, end = self._span(b)
        return self._disk.get(self._cache_key(b), end - start)

    def _to_cache(self, b: int, data: bytes, start: int) -> None:
        """Keep row group ``b``'s bytes (within ``data``, which begins at ``start``) on the disk."""
        if self._disk is not None:
            lo, hi = self._span(b)
            self._disk.put(self._cache_key(b), bytes(memoryview(data)[lo - start : hi - start]))

    def _remote_file(self, f: int) -> RemoteFile:
        remote = self._remotes.get(f)
        if remote is None:  # its size asked outside the lock: the footer threads open files at once
            tail = self._tail if f not in self._footers else 0  # a footer to read: fetched with the size
            remote = open_remote(self.files[f], self.remote, self._storage_options, size=self._sizes.get(f), tail=tail)
            with self._lock:  # one file object per file, shared by the threads: its fs is thread-safe
                remote = self._remotes.setdefault(f, remote)
                self._sizes[f] = remote.size
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
        """Start fetching the remote row groups that hold ``rows`` (the next batches' rows, in order).

        Up to ``Remote.read_ahead`` row groups and the byte budget are fetched or in flight. Once
        some are, more are asked for only when a quarter of the room is free, so that row groups
        next to each other in a file can share a request (a sequential read's next ones are); and
        at most a quarter of the budget is asked for at a time, so that the first row groups needed
        do not share the link with the whole budget (at the start of an epoch: 64 MiB at once held
        the first batch 0.14 s on loopback with 2 MB row groups).
        """
        self._local()
        if not self.reads_ahead:
            return
        limit = self.remote.read_ahead
        rows = list(rows)
        if len(self._ahead) >= limit and next(self._upcoming(rows[:1]), None) is not None:
            self._forget_unplanned(rows)  # full, yet the next batch's row groups are not among them
        slots, room = limit - len(self._ahead), self._ahead_budget - self._ahead_bytes
        if self._ahead and (slots < max(1, limit // 4) or room < self._ahead_budget // 4):
            return
        wanted: list[int] = []
        burst = self._ahead_budget // 4
        for b in self._upcoming(rows):
            size = self._span(b)[1] - self._span(b)[0]
            if len(wanted) >= slots or (size > min(room, burst) and (wanted or self._ahead)):
                break
            room, burst = room - size, burst - size
            data = self._from_cache(b)
            if data is not None:  # on the node's disk: no request
                done: Future = Future()
                done.set_result(data)
                self._ahead[b], self._ahead_bytes = (done, self._span(b)[0]), self._ahead_bytes + size
                self._from_disk.add(b)
                slots -= 1
                continue
            wanted.append(b)
        for group in self._requests(wanted):
            f = self._block_file[group[0]]
            start, end = self._span(group[0])[0], self._span(group[-1])[1]
            future = self._remote_file(f).fetch_later(start, end)
            for b in group:
                self._ahead[b] = (future, start)
                self._ahead_bytes += self._span(b)[1] - self._span(b)[0]

    def _forget_unplanned(self, rows: list[np.ndarray]) -> None:
        """Drop the row groups fetched ahead that the plan no longer holds (an epoch left before
        its end), so that they do not keep the room of the ones it needs."""
        planned = set(np.searchsorted(self._block_end, np.concatenate(rows), side="right").tolist()) if rows else set()
        for b in [b for b in self._ahead if b not in planned]:
            del self._ahead[b]
            self._ahead_bytes -= self._span(b)[1] - self._span(b)[0]
            self._from_disk.discard(b)

    def _upcoming(self, rows: list[np.ndarray]) -> Iterator[int]:
        """The row groups of ``rows`` not cached nor asked for yet, in order of first need."""
        if not rows:
            return
        # One search over all the rows rather than one per batch: this runs each batch, over the
        # rows of ~a hundred batches.
        blocks, first = np.unique(
            np.searchsorted(self._block_end, np.concatenate(rows), side="right"), return_index=True
        )
        for b in blocks[np.argsort(first, kind="stable")].tolist():
            if b not in self._cache and b not in self._ahead:
                yield b

    def _requests(self, blocks: list[int]) -> list[list[int]]:
        """``blocks`` as range requests: runs of row groups adjacent in one file, each run at most
        ``max_request_bytes`` (a larger row group alone), in order of their first block's need."""
        need = {b: k for k, b in enumerate(blocks)}
        runs: list[list[int]] = []
        for b in sorted(blocks, key=lambda b: (self._block_file[b], self._span(b)[0])):
            run = runs[-1] if runs else None
            if (
                run is not None
                and self._block_file[run[-1]] == self._block_file[b]
                and self._span(run[-1])[1] == self._span(b)[0]
                and self._span(b)[1] - self._span(run[0])[0] <= self._request_bytes
            ):
                run.append(b)
            else:
                runs.append([b])
        return sorted(runs, key=lambda run: min(need[b] for b in run))

    def _block(self, b: int) -> pa.Table:
        self._local()
        table = self._cache.get(b)
        if table is not None:
            self._cache.move_to_end(b)
            return table
        ahead = self._ahead.pop(b, None)
        if ahead is not None:
            self._ahead_bytes -= self._span(b)[1] - self._span(b)[0]
        table = self._read(b, ahead)
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
