"""Sources read front to back: hub ids with ``streaming=True``, json(.gz), csv, webdataset...

The epoch order has the same shape as for random-access sources (``order.py``): shard order
shuffled with ``rng(seed, epoch)`` and cut into lanes of whole shards (``shard_lanes``), then
rows shuffled inside fixed windows of each lane, lanes interleaved batch by batch. Each reader
reads only its lanes' shards. Because a window is a pure function of the stream, a resume
rebuilds it by reading instead of storing the buffered rows in the checkpoint: the checkpoint
stays a few integers and the shuffle is exact. The price is that resuming at batch ``j`` of a
lane reads (without decoding or transforming) the lane's rows before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import datasets
import pyarrow as pa

from ..order import block_permutation, window_permutation
from ..spec import Source
from .base import file_digest, fingerprint, select_columns
from .culprits import check_whole, read_error
from .remote import opened, over_network, retried_tables, stream_storage_options
from .resolve import local_data_files, split_files

__all__ = ["StreamStore", "StreamWindows"]

_READ_ROWS = 1000
_INFER_BYTES = 1 << 20


class StreamStore:
    """A ``datasets.IterableDataset`` read shard by shard, as arrow tables."""

    random_access = False
    # A stream's file and HTTP handles are not shared across processes: each process reopens the
    # stream itself (``_stream``), with the features found once, so that a worker does not read
    # a file again to infer them (the json builder reads a whole chunk of the first file).
    fork_safe = True
    portable = True
    chain = None

    def set_epoch(self, epoch: int) -> None:
        """Nothing to tell: the stream's shard order and windows follow ``StreamWindows``' epoch."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._load_kwargs = dict(source.load_kwargs)
        for key in ("name", "data_dir"):
            if getattr(source, key) is not None:
                self._load_kwargs[key] = getattr(source, key)
        if source.data_files is not None:
            self._load_kwargs["data_files"] = split_files(source)
        if source.path == "json":
            # The json builder infers the features from its first chunk (10 MB by default) in every
            # process that opens it; 1 MB still holds ~thousands of rows.
            self._load_kwargs.setdefault("chunksize", _INFER_BYTES)
        try:
            self._files = local_data_files(source)  # listed once, here; None over a network
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Source(path={source.path!r}): {err}") from err
        if self._files is not None:
            self._load_kwargs["data_files"] = {source.split: self._files}
            for f in self._files:  # a tar cut inside a member is read short, silently
                check_whole(f)
        self._ids: datasets.IterableDataset | None = None
        ids = self._opened()
        self.where = source.path if source.data_files is None else f"{source.path}:{source.data_files}"
        self.num_shards = ids.num_shards
        self._inferred = ids.features
        self.features: datasets.Features | None = ids.features
        if self.features is not None:
            self.features = select_columns(self.features, source.columns, self.where)
        splits = (ids.info.splits or {}) if ids.info else {}
        info = splits.get(source.split) if hasattr(splits, "get") else None
        self.num_rows: int | None = info.num_examples if info is not None and info.num_examples else None
        if self._files is not None:  # local files: their base names and contents (the data may move)
            named = [
                source.name,
                source.split,
                self.num_shards,
                [[os.path.basename(f), file_digest(f)] for f in self._files],
            ]
        else:
            named = [source.path, source.name, str(source.data_files), source.split, self.num_shards]
        self.fingerprint = fingerprint(named)
        # datasets' arrow batching breaks on webdataset shards whose samples list columns in
        # different orders; those are read as python rows (undecoded) and put back into arrow.
        builder = getattr(ids.info, "builder_name", None) if ids.info else None
        self._arrow = source.path != "webdataset" and builder != "webdataset"

    def _opened(self) -> datasets.IterableDataset:
        """The stream, opened in the main process. Some builders (json) read the first rows of the
        first file to find the columns; an error there names that file, and the line for JSON."""
        try:
            return self._stream()
        except (FileNotFoundError, ConnectionError):
            raise
        except Exception as err:  # noqa: BLE001 - whatever the reader raised, said with its file
            if not self._files:
                raise
            raise ValueError(
                f"cannot read {self._files[0]} (the first file of {self._source.path!r}, read to find its columns): "
                f"{read_error(self._files[0], err)}"
            ) from err

    def _stream(self) -> datasets.IterableDataset:
        if self._ids is not None and self._pid == os.getpid():
            return self._ids
        kwargs = dict(self._load_kwargs)
        if getattr(self, "_inferred", None) is not None and self._source.path == "json":
            kwargs["features"] = self._inferred
        options = stream_storage_options(self._source)  # a silent server: Remote.timeout, not 5 min
        if options is not None:
            kwargs["storage_options"] = options
        try:
            ids = opened(
                lambda: datasets.load_dataset(self._source.path, split=self._source.split, streaming=True, **kwargs),
                self._source,
            )
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Source(path={self._source.path!r}): {err}") from err
        if self._source.columns is not None:
            ids = ids.select_columns(self._source.columns)
        self._ids, self._pid = ids, os.getpid()
        return ids

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": None}

    def read_shard(self, index: int) -> Iterator[pa.Table]:
        """The shard's tables. Over a network, a transient failure (a 5xx, a reset) reads the shard
        again, skipping the rows already given (``stores/remote.py``)."""
        if not over_network(self._source):
            return self._named(index)
        return retried_tables(lambda: self._read_shard(index), f"{self.where} shard {index}", self._source)

    def _named(self, index: int) -> Iterator[pa.Table]:
        """A local shard's tables; an error reading them (a truncated .gz, a malformed line) names
        the shard's file, and for JSON lines the line, rather than only the row of datasets' chunk."""
        try:
            yield from self._read_shard(index)
        except Exception as err:  # noqa: BLE001 - whatever the reader raised, said with its file
            files = self._files if self._files is not None and len(self._files) == self.num_shards else None
            if files is None:
                raise ValueError(f"cannot read shard {index} of {self.where}: {type(err).__name__}: {err}") from err
            raise ValueError(
                f"cannot read {files[index]} (shard {index} of {self.where}): {read_error(files[index], err)}"
            ) from err

    def _read_shard(self, index: int) -> Iterator[pa.Table]:
        shard = self._stream().shard(num_shards=self.num_shards, index=index, contiguous=True)
        if not self._arrow:
            schema = self.features.arrow_schema if self.features is not None else None
            for batch in shard.decode(False).iter(batch_size=_READ_ROWS):
                yield pa.Table.from_pydict(batch, schema=schema)
            return
        for table in shard.with_format("arrow").iter(batch_size=_READ_ROWS):
            if self.features is None:
                self.features = datasets.Features.from_arrow_schema(table.schema)
            # Keep every shard's columns in the features' order, so windows concatenate.
            yield table.select([c for c in self.features if c in table.column_names])

    def describe(self, row: int) -> str:
        return f"{self.where} (epoch row {row})"


class StreamWindows:
    """One epoch of a stream (or of one lane of it: ``shards``), cut into shuffled windows, read only as far as asked.

    Positions count the rows of the lane from 0. ``start=(k, row)`` begins reading at the lane's
    ``k``-th shard, whose first row is ``row``: the windows before it are not read again. For
    that, each window remembers its *anchor*, the shard its first row comes from
    (:meth:`anchor`); a resume that starts from the anchor of the window it needs reads at most
    that shard's rows before the window, and the window.
    """

    def __init__(
        self,
        store: StreamStore,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        window: int,
        shards: Sequence[int] | None = None,
        lane: int = 0,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        self.store, self.seed, self.epoch, self.shuffle, self.window, self.lane = (
            store,
            seed,
            epoch,
            shuffle,
            window,
            lane,
        )
        if shards is None:  # the whole stream, in the epoch's shard order
            shards = block_permutation(store.num_shards, seed=seed, epoch=epoch, shuffle=shuffle)
        first_shard, self._read = start
        self._tables = self._read_from(list(shards), first_shard)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._windows: dict[int, pa.Table] = {}
        self._anchors: dict[int, tuple[int, int]] = {}
        self._shard_starts: list[tuple[int, int]] = []  # (k, row) of the shards begun, newest last
        self._next_window = -(-self._read // window)  # the first window that starts at or after ``row``
        self._skip = self._next_window * window - self._read  # rows of the start shard before that window
        self.num_rows: int | None = None  # known once the stream has ended

    def _read_from(self, shards: list[int], first: int) -> Iterator[pa.Table]:
        for k in range(first, len(shards)):
            self._shard_starts.append((k, self._read))
            for table in self.store.read_shard(int(shards[k])):
                self._read += table.num_rows
                yield table

    def anchor(self, w: int) -> tuple[int, int]:
        """``(k, row)``: the lane's shard in which window ``w`` begins, and that shard's first row."""
        return self._anchors[w]

    def _fill(self) -> bool:
        """Read the next window; False when the stream has ended."""
        if self.num_rows is not None:
            return False
        w = self._next_window
        while self._pending_rows < self.window + self._skip:
            table = next(self._tables, None)
            if table is None:
                break
            self._pending.append(table)
            self._pending_rows += table.num_rows
        if self._skip:
            rows = (
                pa.concat_tables(self._pending, promote_options="permissive")
                if len(self._pending) > 1
                else self._pending[0]
            )
            rows = rows.slice(min(self._skip, rows.num_rows))
            self._pending, self._pending_rows, self._skip = [rows], rows.num_rows, 0
        if not self._pending_rows:
            self.num_rows = w * self.window
            return False
        # The window begins in the last shard begun at or before its first row.
        while len(self._shard_starts) > 1 and self._shard_starts[1][1] <= w * self.window:
            self._shard_starts.pop(0)
        self._anchors = {k: v for k, v in self._anchors.items() if k >= w - 1}
        self._anchors[w] = self._shard_starts[0]
        rows = (
            pa.concat_tables(self._pending, promote_options="permissive").combine_chunks()
            if len(self._pending) > 1
            else self._pending[0]
        )
        head, tail = rows.slice(0, self.window), rows.slice(self.window)
        self._pending, self._pending_rows = ([tail], tail.num_rows) if tail.num_rows else ([], 0)
        if self.shuffle:
            head = head.take(
                pa.array(
                    window_permutation(head.num_rows, seed=self.seed, epoch=self.epoch, window_index=w, lane=self.lane)
                )
            )
        self._windows[w] = head
        self._next_window += 1
        if head.num_rows < self.window:
            self.num_rows = w * self.window + head.num_rows
        return True

    def available(self, position: int) -> bool:
        """Whether the stream reaches ``position`` (reads ahead as needed)."""
        while position >= self._next_window * self.window:
            if not self._fill():
                return position < (self.num_rows or 0)
        return self.num_rows is None or position < self.num_rows

    def take(self, a: int, b: int) -> pa.Table:
        """Rows at epoch positions ``[a, b)``, which must be available."""
        # Positions only move forward: windows wholly before ``a`` are done with.
        self._windows = {k: v for k, v in self._windows.items() if k >= a // self.window}
        pieces = []
        for w in range(a // self.window, (b - 1) // self.window + 1):
            lo, hi = max(a, w * self.window) - w * self.window, min(b, (w + 1) * self.window) - w * self.window
            if w not in self._windows:
                raise RuntimeError(f"stream window {w} is no longer buffered (positions must move forward)")
            pieces.append(self._windows[w].slice(lo, hi - lo))
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
