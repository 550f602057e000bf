"""The torch ``IterableDataset`` that runs in each DataLoader worker.

It yields whole batches: for each of its local steps a worker gathers the rows of its batch
(``order.py`` maps epoch positions to rows, ``sharding.py`` positions to batches), decodes them
with the source's ``datasets.Features``, runs the transform pipeline and collates. Each batch
goes out with a small header (its step and its row counts) that the loader strips in the main
process; the header is how the main process knows exactly which step it is handing to training.

The epoch and the position to start from are read, at the start of each iteration, from a
shared-memory tensor written by the main process, so they reach workers that persist across
epochs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import numpy as np
import pyarrow as pa
import torch
from datasets.features.features import decode_nested_example, require_decoding
from torch.utils.data import IterableDataset, get_worker_info

from .collate import collate_rows
from .sharding import EvalLayout, Layout
from .sources import Source, open_store
from .transfer import ByValue
from .streams import StreamWindows
from .transforms import Pipeline

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


@dataclass
class _Options:
    batch_size: int
    shuffle: bool
    seed: int
    window: int
    drop_last: bool
    pipeline: Pipeline
    collate_fn: Optional[Callable[[list[dict]], Any]]
    on_error: Literal["raise", "skip"]
    cache_rows: int
    pad: bool = False
    evaluation: bool = False
    batch_format: Literal["python", "numpy"] = "python"


class StreamingDataset(IterableDataset):
    """Batches of one rank's share of a :class:`~lightning_stream.Source`.

    Built by :class:`~lightning_stream.StreamingDataModule`; use it directly only with a
    :class:`~lightning_stream.loader.StreamingDataLoader`, which sets the epoch and start.
    """

    def __init__(self, source: Source, options: _Options, *, rank: int = 0, world_size: int = 1) -> None:
        self.source, self.options, self.rank, self.world_size = source, options, rank, world_size
        # [epoch, start position]: written by the main process before each iteration.
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._store: Any = None
        self._store_pid: Optional[int] = None
        self._in_worker = False

    @property
    def store(self) -> Any:
        if self._store is None or self._store_pid != os.getpid():
            self._store = open_store(self.source, cache_rows=self.options.cache_rows)
            self._store_pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict:
        # Workers reopen the store: file handles and caches do not cross processes.
        return {**self.__dict__, "_store": None, "_store_pid": None}

    @property
    def num_rows(self) -> Optional[int]:
        return self.store.num_rows

    def layout(self, start: int = 0) -> Union[Layout, EvalLayout, None]:
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

    def set_position(self, epoch: int, start: int) -> None:
        self.control[0] = epoch
        self.control[1] = start

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[BatchHeader, Any]]:
        epoch, start = (int(x) for x in self.control.tolist())
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._in_worker = info is not None
        o = self.options
        store = self.store
        if store.random_access:
            layout = self.layout(start)
            order = store.epoch_order(seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window)
            for step in range(worker, layout.num_steps, num_workers):
                a, b = layout.batch_range(step, self.rank)
                rows = order.rows(np.arange(a, b) % store.num_rows)  # wraps only for pad=True
                yield self._make(step, store.take(rows), lambda i, rows=rows: store.describe(int(rows[i])))
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
            yield self._make(step, windows.take(a, b), lambda i, a=a: store.describe(a + i))
            step += num_workers

    def _make(self, step: int, table: pa.Table, describe: Callable[[int], str]) -> Any:
        batch, skipped = self._process(table, describe)
        header = BatchHeader(step=step, rows_read=table.num_rows, rows_out=_num_rows(batch), skipped=skipped)
        item = (header, collate_rows(batch, self.options.collate_fn) if header.rows_out else None)
        return ByValue(item) if self._in_worker else item

    def _transform(self, table: pa.Table) -> dict[str, Any]:
        features = self.store.features
        batch: dict[str, Any] = {}
        for name, column in zip(table.column_names, table.columns):
            feature = features.get(name)
            if feature is None or not require_decoding(feature):
                batch[name] = _numpy_column(column) if self.options.batch_format == "numpy" else column.to_pylist()
                continue
            try:
                batch[name] = [decode_nested_example(feature, v) if v is not None else None for v in column.to_pylist()]
            except Exception as err:
                raise ValueError(f"column {name!r}: cannot decode ({type(err).__name__}: {err})") from err
        return self.options.pipeline(batch) if self.options.pipeline else batch

    def _process(self, table: pa.Table, describe: Callable[[int], str]) -> tuple[dict[str, list], list[str]]:
        try:
            return self._transform(table), []
        except Exception:  # noqa: BLE001 - narrowed to the culprit row below
            if table.num_rows == 0:
                raise
        # Find the culprit rows one by one; the policy decides between naming and skipping them.
        outputs, skipped = [], []
        for i in range(table.num_rows):
            try:
                outputs.append(self._transform(table.slice(i, 1)))
            except Exception as err:  # noqa: BLE001
                culprit = f"{describe(i)}: {type(err).__name__}: {err}"
                if self.options.on_error == "raise":
                    raise RowError(f"bad row in {culprit} (pass on_error='skip' to skip and count such rows)") from err
                skipped.append(culprit)
        keys = list(outputs[0]) if outputs else []
        return {k: [v for out in outputs for v in out[k]] for k in keys}, skipped


def _numpy_column(column: pa.ChunkedArray) -> Any:
    """A column as numpy without a Python object per value where arrow allows it."""
    array = column.combine_chunks()
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        values = array.flatten()
        if array.null_count == 0 and (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)) and len(array):
            offsets = np.diff(array.offsets.to_numpy()) if not pa.types.is_fixed_size_list(kind) else None
            width = kind.list_size if offsets is None else int(offsets[0])
            if offsets is None or (offsets == width).all():
                return values.to_numpy().reshape(len(array), width)
        return [np.asarray(v) if v is not None else None for v in array.to_pylist()]
    if array.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        return array.to_numpy(zero_copy_only=False)
    return array.to_pylist()


def _num_rows(batch: dict[str, list]) -> int:
    return len(next(iter(batch.values()))) if batch else 0
