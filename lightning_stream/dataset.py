"""The torch ``IterableDataset`` that runs in each DataLoader worker.

It yields whole batches: for each of its local steps a worker gathers the rows of its batch
(``order.py`` maps epoch positions to rows, ``split.py`` positions to batches), decodes them
with the source's ``datasets.Features``, runs the transform pipeline and collates. Each batch
goes out with a small header (its step and its row counts) that the loader strips in the main
process; the header is how the main process knows exactly which step it is handing to training.

The epoch and the position to start from are read, at the start of each iteration, from a
shared-memory tensor written by the main process, so they reach workers that persist across
epochs.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from datasets.features.features import decode_nested_example, require_decoding
from torch.utils.data import IterableDataset, get_worker_info

from .collate import collate_rows
from .order import shard_lanes
from .rng import batch_rng
from .spec import Source
from .split import EvalLayout, Layout
from .stores import open_store
from .stores.columns import is_list, numpy_view
from .stores.stream import StreamWindows
from .transfer import ByValue
from .transforms import Pipeline, TransformError

log = logging.getLogger(__name__)

__all__ = ["StreamingDataset", "BatchHeader", "RowError"]


class RowError(ValueError):
    """A row could not be decoded or transformed; the message names its file and row."""


@dataclass
class BatchHeader:
    """What the main process learns about a batch besides its data."""

    step: int
    rows_read: int
    rows_out: int
    skipped: list[str] = field(default_factory=list)
    # A stream lane's batch: (lane, k, row), the lane's shard its window begins in (a resume reads from there).
    anchor: tuple[int, int, int] | None = None


@dataclass
class _Options:
    batch_size: int
    shuffle: bool
    seed: int
    window: int
    drop_last: bool
    pipeline: Pipeline
    collate_fn: Callable[[list[dict]], Any] | None
    on_error: Literal["raise", "skip"]
    cache_rows: int
    cache_windows: int = 2  # shuffle windows a reader holds at once (the rows of which ``cache_rows`` counts)
    pad: bool = False
    evaluation: bool = False
    batch_format: Literal["python", "numpy"] = "python"
    in_order: bool = False  # evaluation batches in row order within a rank (predict), not per-worker runs


class StreamingDataset(IterableDataset):
    """Batches of one rank's share of a :class:`~lightning_stream.Source`.

    Built by :class:`~lightning_stream.StreamingDataModule`; use it directly only with a
    :class:`~lightning_stream.loader.StreamingDataLoader`, which sets the epoch and start.
    """

    def __init__(self, source: Source, options: _Options, *, rank: int = 0, world_size: int = 1) -> None:
        self.source, self.options, self.rank, self.world_size = source, options, rank, world_size
        # [epoch, start position, lanes]: written by the main process before each iteration.
        self.control = torch.tensor([0, 0, 1], dtype=torch.int64).share_memory_()
        self._store: Any = None
        self._store_pid: int | None = None
        # (epoch, start, [[k, row] per lane]): where a resumed stream's lanes begin reading.
        self.resume_anchors: tuple[int, int, list] | None = None

    @property
    def store(self) -> Any:
        if self._store is None or (self._store_pid != os.getpid() and not self._store.fork_safe):
            self._store = open_store(
                self.source, cache_rows=self.options.cache_rows, cache_windows=self.options.cache_windows
            )
            self._store_pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict:
        # File handles and caches do not cross processes: a portable store travels and opens its
        # own there (so files are not listed, footers not read, features not inferred again);
        # any other store is opened anew by the worker.
        keep = self._store is not None and self._store.portable
        return {**self.__dict__, "_store": self._store if keep else None, "_store_pid": None}

    @property
    def num_rows(self) -> int | None:
        return self.store.num_rows

    def layout(self, start: int = 0) -> Layout | EvalLayout | None:
        n = self.num_rows
        if n is None:
            return None
        o = self.options
        if o.evaluation:
            return EvalLayout(n, o.batch_size, self.world_size)
        return Layout(n, start, o.batch_size, self.world_size, o.drop_last, o.pad)

    def __len__(self) -> int:
        layout = self.layout()
        if layout is None:
            raise TypeError(f"the length of {self.store.where} is unknown until it has been read (a stream)")
        return layout.num_steps

    def set_position(self, epoch: int, start: int, lanes: int = 1) -> None:
        self.control[0] = epoch
        self.control[1] = start
        self.control[2] = lanes

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[BatchHeader, Any]]:
        epoch, start, lanes = (int(x) for x in self.control.tolist())
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        o = self.options
        store = self.store
        if store.random_access:
            layout = self.layout(start)
            order = store.epoch_order(
                seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window, lanes=lanes, batch_size=o.batch_size
            )

            def rows_of(step: int) -> np.ndarray:
                a, b = layout.batch_range(step, self.rank, 1 if o.in_order else num_workers)
                positions = np.arange(a, b)
                return order.rows(positions % store.num_rows if b > store.num_rows else positions)  # pad=True wraps

            for step, rows in self._planned(store, range(worker, layout.num_steps, num_workers), rows_of):
                key = (layout.batch_range(step, self.rank, 1 if o.in_order else num_workers)[0],)
                yield self._make(
                    step, self._take(store, rows), lambda i, rows=rows: store.describe(int(rows[i])), key=(epoch, *key)
                )
            return
        if hasattr(store, "set_epoch"):  # a user's IterableDataset read directly: its own shuffle follows the epoch
            store.set_epoch(epoch)
        if lanes > 1:
            yield from self._stream_lanes(store, epoch, start, lanes, worker, num_workers)
            return
        windows = StreamWindows(store, seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window)
        step_rows = o.batch_size * self.world_size
        step = worker
        while True:
            # Every reader sees the whole stream, so all ranks learn its end at the same step.
            if not windows.available(start + (step + 1) * step_rows - 1):
                if windows.num_rows <= start:
                    return  # resumed at (or past) the end of this epoch's stream
                layout = Layout(windows.num_rows, start, o.batch_size, self.world_size, o.drop_last)
                if step >= layout.num_steps:
                    return
            else:
                layout = Layout(start + (step + 1) * step_rows, start, o.batch_size, self.world_size, o.drop_last)
            a, b = layout.batch_range(step, self.rank)
            yield self._make(step, _Rows.of(windows.take(a, b)), lambda i, a=a: store.describe(a + i), key=(epoch, a))
            step += num_workers

    def _planned(
        self, store: Any, steps: range, rows_of: Callable[[int], np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(step, rows)`` for each of ``steps``; a store that reads ahead is told the next batches' rows."""
        if not getattr(store, "reads_ahead", False):
            yield from ((step, rows_of(step)) for step in steps)
            return
        # A window's worth of this reader's batches (its row groups are needed together), and as many
        # again as the store keeps requests in flight: the next window is fetched while this one is used.
        depth = max(1, -(-(self.options.window + store.read_ahead_rows) // self.options.batch_size))
        planned: deque[tuple[int, np.ndarray]] = deque()
        upcoming = iter(steps)
        for step in itertools.islice(upcoming, depth):
            planned.append((step, rows_of(step)))
        while planned:
            store.read_ahead([rows for _, rows in planned])
            yield planned.popleft()
            step = next(upcoming, None)
            if step is not None:
                planned.append((step, rows_of(step)))

    def _stream_lanes(
        self, store: Any, epoch: int, start: int, lanes: int, worker: int, num_workers: int
    ) -> Iterator[tuple[BatchHeader, Any]]:
        """A stream whose shards are dealt to lanes: this worker reads only the lanes of its batches.

        Step ``s`` of rank ``r`` is the epoch's batch ``g = start // batch_size + s * world_size + r``,
        batch ``g // lanes`` of lane ``g % lanes``. A lane's length is known only once it has been
        read, so lanes of unequal lengths leave holes: batches whose lane has run out. One rank
        skips them (an empty step, so positions keep their meaning) until all its lanes are done.
        Several ranks must take the same number of steps, so there the epoch ends at the first
        hole: this worker stops, and the loaders of all ranks agree on that step
        (``StreamingDataLoader``); the rows the longer lanes still had are not used.
        """
        o = self.options
        shards = shard_lanes(store.num_shards, lanes, seed=o.seed, epoch=epoch, shuffle=o.shuffle)
        first = start // o.batch_size
        resumed = self.resume_anchors
        anchors = (
            resumed[2] if resumed is not None and resumed[:2] == (epoch, start) and len(resumed[2]) == lanes else None
        )

        def lane_of(step: int) -> tuple[int, int]:
            g = first + step * self.world_size + self.rank
            return g % lanes, (g // lanes) * o.batch_size

        mine = {lane_of(step)[0] for step in range(worker, worker + num_workers * lanes, num_workers)}
        readers: dict[int, StreamWindows] = {}
        ended: set[int] = set()
        for step in itertools.count(worker, num_workers):
            lane, a = lane_of(step)
            windows = readers.get(lane)
            if windows is None:
                begin = tuple(anchors[lane]) if anchors is not None else (0, 0)
                windows = readers[lane] = StreamWindows(
                    store,
                    seed=o.seed,
                    epoch=epoch,
                    shuffle=o.shuffle,
                    window=o.window,
                    shards=shards[lane].tolist(),
                    lane=lane,
                    start=begin,
                )
            b = a + o.batch_size
            if not windows.available(b - 1):
                b = windows.num_rows if windows.available(a) and not o.drop_last else a
            if b > a:
                anchor = (lane, *windows.anchor(a // o.window))
                describe = lambda i, a=a, lane=lane: f"{store.where} (lane {lane} row {a + i})"  # noqa: E731
                yield self._make(step, _Rows.of(windows.take(a, b)), describe, anchor, key=(epoch, a, lane))
                continue
            ended.add(lane)
            if self.world_size > 1 or ended >= mine:
                return
            hole = (BatchHeader(step=step, rows_read=0, rows_out=0), None)
            yield ByValue(hole) if get_worker_info() is not None else hole

    def _take(self, store: Any, rows: np.ndarray) -> _Rows:
        if not len(rows):
            return _Rows(None, {}, 0)  # an evaluation rank's empty last batch (split.EvalLayout): nothing to read
        take_arrays = getattr(store, "take_arrays", None)
        if take_arrays is None:
            return _Rows.of(store.take(rows))
        table, arrays = take_arrays(rows)
        return _Rows(table, arrays, len(rows))

    def _make(
        self,
        step: int,
        rows: _Rows,
        describe: Callable[[int], str],
        anchor: tuple[int, int, int] | None = None,
        *,
        key: tuple[int, ...],
    ) -> Any:
        # Seeded by where the batch is, not by the worker's history: random transforms (and random
        # collators, e.g. masking) draw the same numbers after a resume and with any num_workers.
        with batch_rng(self.options.seed, key[0], key[1:]):
            batch, skipped = self._process(rows, describe)
            header = BatchHeader(
                step=step, rows_read=rows.num_rows, rows_out=_num_rows(batch), skipped=skipped, anchor=anchor
            )
            item = (header, collate_rows(batch, self.options.collate_fn) if header.rows_out else None)
        return ByValue(item) if get_worker_info() is not None else item

    def _transform(self, rows: _Rows) -> dict[str, Any]:
        chain = getattr(self.store, "chain", None)
        if chain is not None:  # a datasets object's own map/filter chain or format decodes and maps first
            batch = chain(rows.table)
            return self.options.pipeline(batch) if self.options.pipeline else batch
        features = self.store.features
        numpy = self.options.batch_format == "numpy"
        columns = dict(zip(rows.table.column_names, rows.table.columns)) if rows.table is not None else {}
        batch: dict[str, Any] = {}
        for name in [*features, *(c for c in columns if c not in features)]:
            if name in rows.arrays:
                batch[name] = rows.arrays[name] if numpy else rows.arrays[name].tolist()
                continue
            column = columns[name]
            feature = features.get(name)
            if feature is None or not require_decoding(feature):
                batch[name] = _numpy_column(column) if numpy else column.to_pylist()
                continue
            try:
                batch[name] = [decode_nested_example(feature, v) if v is not None else None for v in column.to_pylist()]
            except Exception as err:
                raise ValueError(f"column {name!r}: cannot decode ({type(err).__name__}: {err})") from err
        return self.options.pipeline(batch) if self.options.pipeline else batch

    def _process(self, rows: _Rows, describe: Callable[[int], str]) -> tuple[dict[str, list], list[str]]:
        """The batch's rows decoded and transformed, and the bad rows skipped (``on_error="skip"``).

        An exception may be one row's fault: the batch is then re-run row by row to name (or skip)
        that row. A :class:`~lightning_stream.transforms.TransformError` is the function's fault,
        whatever the rows: it is raised at once, with no re-run and no skip.
        """
        if rows.num_rows == 0:
            return {}, []  # an evaluation rank's empty last batch: no function sees an empty batch
        if not rows.num_columns:
            raise ValueError(f"the rows of {describe(0)} have no column: select at least one (Source(columns=...))")
        try:
            return self._transform(rows), []
        except TransformError as err:
            raise _located(err, f"the batch that begins at {describe(0)}")  # noqa: B904 - err itself, located
        except Exception:  # noqa: BLE001 - narrowed to the culprit row below
            pass
        # Find the culprit rows one by one; the policy decides between naming and skipping them.
        outputs, skipped = [], []
        for i in range(rows.num_rows):
            try:
                outputs.append(self._transform(rows.row(i)))
            except TransformError as err:
                raise _located(err, describe(i))  # noqa: B904 - err itself, located
            except Exception as err:  # noqa: BLE001
                culprit = f"{describe(i)}: {type(err).__name__}: {err}"
                if self.options.on_error == "raise":
                    raise RowError(f"bad row in {culprit} (pass on_error='skip' to skip and count such rows)") from err
                skipped.append(culprit)
        keys = list(outputs[0]) if outputs else []
        return {k: _concat([out[k] for out in outputs]) for k in keys}, skipped


def _located(err: TransformError, where: str) -> TransformError:
    """``err``, its message saying which rows showed the bug (its traceback and cause kept)."""
    err.args = (f"{err.args[0]} (seen on {where})", *err.args[1:])
    return err


@dataclass
class _Rows:
    """A batch's rows before decoding: arrow columns and, where the store has them, numpy ones."""

    table: pa.Table | None
    arrays: dict[str, np.ndarray]
    num_rows: int

    @classmethod
    def of(cls, table: pa.Table) -> _Rows:
        return cls(table, {}, table.num_rows)

    @property
    def num_columns(self) -> int:
        return (self.table.num_columns if self.table is not None else 0) + len(self.arrays)

    def row(self, i: int) -> _Rows:
        table = self.table.slice(i, 1) if self.table is not None else None
        return _Rows(table, {k: v[i : i + 1] for k, v in self.arrays.items()}, 1)


def _concat(parts: list[Any]) -> Any:
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


def _num_rows(batch: dict[str, list]) -> int:
    return len(next(iter(batch.values()))) if batch else 0
