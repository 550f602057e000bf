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

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .budget import BudgetLayout
from .collate import collate_rows
from .decode import Rows, decode
from .empty import EmptyBatch
from .lengths import Length
from .plans import PlannedStep, Reader, plan
from .progress import PassChannel, PassStart
from .rng import batch_rng
from .spec import Source
from .split import EvalLayout, Layout
from .stores import open_store
from .tally import RowError, transform_rows
from .telemetry import StageClock
from .token_plans import TokenPlans
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
    batch_tokens: int | None = None  # token-budget steps (``budget.py``): tokens per step and rank
    length: Length | None = None  # each raw row's tokens (``lengths.py``), for ``batch_tokens``
    max_images: int | None = None  # images per step, with ``batch_tokens``
    block_size: int | None = None  # fixed token blocks (``blocks.py``): tokens per block
    tokens_column: str = "input_ids"  # the transform's column the blocks are cut from


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
        self.tokens = TokenPlans(source, options)  # token-budget steps and token blocks
        self.clock = StageClock()  # this process's stage times for the batch it is making

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

    def layout(self, start: int = 0, *, epoch: int = 0, lanes: int = 1) -> Layout | EvalLayout | BudgetLayout | None:
        """How the epoch's positions from ``start`` form each rank's steps (``None``: a stream)."""
        n = self.num_rows
        if n is None:
            return None
        o = self.options
        if o.evaluation:
            return EvalLayout(n, o.batch_size, self.world_size)
        if self.tokens.active:
            return self.tokens.layout(self.store, start, epoch=epoch, lanes=lanes, world_size=self.world_size)
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
        steps = plan(store, self.options, self._layout_of, at, reader)
        while True:
            with self.clock.stage("read"):  # planning and fetching the step's rows
                planned = next(steps, None)
            if planned is None:
                return
            if planned.rows is None:  # a lane that ran out: a step without a batch
                yield outgoing(BatchHeader(step=planned.step, rows_read=0, rows_out=0), None)
            else:
                yield self._make(planned)

    def _layout_of(self, at: PassStart) -> Any:
        return self.layout(at.start, epoch=at.epoch, lanes=at.lanes)

    def _make(self, planned: PlannedStep) -> Any:
        # Seeded by where the batch is, not by the worker's history: random transforms (and random
        # collators, e.g. masking) draw the same numbers after a resume and with any num_workers.
        rows = planned.rows
        with batch_rng(self.options.seed, planned.key[0], planned.key[1:]):
            batch, skipped = transform_rows(rows, self._transform, planned.describe, self.options.on_error)
            if planned.cut is not None:
                return self._blocks(planned, batch, skipped)
            out = num_rows(batch)
            header = BatchHeader(planned.step, rows.num_rows, out, skipped, planned.anchor)
            if out:
                with self.clock.stage("collate"):
                    collated = collate_rows(batch, self.options.collate_fn)
                header.stages = self.clock.take()
                return outgoing(header, collated)
            # A training step whose rows were all removed is still a step (``empty.py``).
            emptied = rows.num_rows and not self.options.evaluation
            return outgoing(header, EmptyBatch(planned.step) if emptied else None)

    def _blocks(self, planned: PlannedStep, batch: dict[str, Any], skipped: list[str]) -> Any:
        """The step's blocks, cut from its rows' tokens (``blocks.py``)."""
        offset, count, size, expected = planned.cut
        column = self.options.tokens_column
        if skipped:
            raise RowError(f"block_size cuts every row's tokens into the stream: no row can be skipped ({skipped[0]})")
        if column not in batch:
            raise ValueError(f"block_size: the transform's output has no column {column!r} (columns: {sorted(batch)})")
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in batch[column]]
        for i, (seq, n) in enumerate(zip(seqs, expected)):
            if len(seq) != n:
                raise ValueError(
                    f"{planned.describe(i)}: length says {int(n)} tokens but the transform's {column!r} has {len(seq)}; "
                    "the blocks are planned from length, so it must count exactly the tokens the transform makes"
                )
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        tokens = torch.from_numpy(np.ascontiguousarray(flat[offset : offset + count * size].reshape(count, size)))
        header = BatchHeader(planned.step, planned.rows.num_rows, planned.rows.num_rows, [], planned.anchor)
        header.stages = self.clock.take()
        return outgoing(header, {column: tokens})

    def _transform(self, rows: Rows) -> dict[str, Any]:
        chain = self.store.chain
        with self.clock.stage("decode"):
            if chain is not None:  # a datasets object's own map/filter chain or format decodes and maps first
                batch = chain(rows.table)
            else:
                batch = decode(rows, self.store.features, self.options.batch_format)
        if not self.options.pipeline:
            return batch
        with self.clock.stage("transform"):
            return self.options.pipeline(batch)
