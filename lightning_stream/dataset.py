"""The torch ``IterableDataset`` that runs in each DataLoader worker: the store, and the loop.

For each step of its plan (``plans.py``: which rows each of this worker's steps holds) a worker
decodes the rows (``decode.py``), runs the transform pipeline under the bad-row policy
(``tally.py``) and collates. Each batch goes out with its header (``wire.py``). The pass's epoch
and start reach the worker through the loader's shared-memory channel (``progress.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from torch.utils.data import IterableDataset, get_worker_info

from .collate import collate_rows
from .decode import Rows, decode
from .empty import EmptyBatch
from .plans import PlannedStep, Reader, plan
from .progress import PassChannel
from .rng import batch_rng
from .spec import Source
from .split import EvalLayout, Layout
from .stores import open_store
from .tally import RowError, transform_rows
from .transforms import Pipeline, num_rows
from .wire import BatchHeader, outgoing

__all__ = ["BatchHeader", "RowError", "StreamingDataset"]


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
        # Written by the loader before each pass, read by every worker when its pass starts.
        self.channel = PassChannel()
        self._store: Any = None
        self._store_pid: int | None = None

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

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        at = self.channel.read()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = self.store
        if not store.random_access:
            store.set_epoch(at.epoch)  # a user's IterableDataset read directly: its own shuffle follows the epoch
        reader = Reader(self.rank, self.world_size, worker, num_workers)
        for planned in plan(store, self.options, self.layout, at, reader):
            if planned.rows is None:  # a lane that ran out: a step without a batch
                yield outgoing(BatchHeader(step=planned.step, rows_read=0, rows_out=0), None)
            else:
                yield self._make(planned)

    def _make(self, planned: PlannedStep) -> Any:
        # Seeded by where the batch is, not by the worker's history: random transforms (and random
        # collators, e.g. masking) draw the same numbers after a resume and with any num_workers.
        rows = planned.rows
        with batch_rng(self.options.seed, planned.key[0], planned.key[1:]):
            batch, skipped = transform_rows(rows, self._transform, planned.describe, self.options.on_error)
            out = num_rows(batch)
            header = BatchHeader(planned.step, rows.num_rows, out, skipped, planned.anchor)
            if out:
                return outgoing(header, collate_rows(batch, self.options.collate_fn))
            # A training step whose rows were all removed is still a step (``empty.py``).
            emptied = rows.num_rows and not self.options.evaluation
            return outgoing(header, EmptyBatch(planned.step) if emptied else None)

    def _transform(self, rows: Rows) -> dict[str, Any]:
        chain = self.store.chain
        if chain is not None:  # a datasets object's own map/filter chain or format decodes and maps first
            batch = chain(rows.table)
        else:
            batch = decode(rows, self.store.features, self.options.batch_format)
        return self.options.pipeline(batch) if self.options.pipeline else batch
