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

from .blocks import BlockLayout, Blocks
from .budget import Budget, BudgetLayout, Plan, RowTooLongError, Rules, plan_epoch
from .collate import collate_rows
from .decode import Rows, decode
from .empty import EmptyBatch
from .lengths import Length, RowLengths, measure
from .order import EpochOrder
from .plans import PlannedStep, Reader, plan
from .progress import PassChannel, PassStart
from .rng import batch_rng
from .spec import Source
from .split import EvalLayout, Layout
from .stores import open_store
from .tally import RowError, transform_rows
from .telemetry import StageClock
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
        self._lengths: RowLengths | None = None  # measured once, in the main process; travels to workers
        self._plans: dict[tuple[int, int], Any] = {}  # (epoch, lanes): the epoch's Plan or Blocks
        self._per_lane: dict[int, int] = {}
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
        return {**self.__dict__, "_store": self._store if keep else None, "_store_pid": None, "_plans": {}}

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
        if o.batch_tokens is not None:
            plan, left_out = self.plan_of(epoch, lanes)
            return BudgetLayout(plan, start, self.world_size, left_out)
        if o.block_size is not None:
            return BlockLayout(self.blocks_of(epoch, lanes), start, self.world_size, self.lengths.tokens)
        return Layout(n, start, o.batch_size, self.world_size, o.drop_last, o.pad)

    def __len__(self) -> int:
        layout = self.layout()
        if layout is None:
            raise TypeError(f"the length of {self.store.where} is unknown until it has been read (a stream)")
        return layout.num_steps

    # -- token-budget steps ---------------------------------------------------------------------
    @property
    def lengths(self) -> RowLengths:
        """Every row's tokens (and images) before the transform, measured once (``lengths.py``)."""
        if self._lengths is None:
            o, store = self.options, self.store
            if not store.random_access or not isinstance(
                store.epoch_order(seed=0, epoch=0, shuffle=False, window=1), EpochOrder
            ):
                raise ValueError(
                    f"batch_tokens and block_size need the rows of {store.where} by index (parquet, arrow, a datasets.Dataset), "
                    "to plan each epoch's steps from their lengths before it starts; a stream or a Mix is read in "
                    "fixed batches (batch_size)"
                )
            cache = {"cache_rows": o.cache_rows, "cache_windows": o.cache_windows}
            lengths = measure(store, o.length, source=self.source, open_store=lambda s: open_store(s, **cache))
            _check_fits(lengths, o, store)
            self._lengths = lengths
        return self._lengths

    def blocks_of(self, epoch: int, lanes: int) -> Blocks:
        """Epoch ``epoch``'s token stream over ``lanes`` lanes (``blocks.py``)."""
        key = (epoch, lanes)
        if key not in self._plans:
            o = self.options
            order = self.store.epoch_order(
                seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window, lanes=lanes, batch_size=o.batch_size
            )
            rows = np.concatenate([order.lane_rows(k, np.arange(int(size))) for k, size in enumerate(order.lane_sizes)])
            blocks = Blocks(rows, np.cumsum(self.lengths.tokens[rows]), o.block_size, o.batch_size, lanes)
            self._plans = {k: v for k, v in self._plans.items() if k[0] >= epoch - 1}
            self._plans[key] = blocks
        return self._plans[key]

    def plan_of(self, epoch: int, lanes: int) -> tuple[Plan, int]:
        """Epoch ``epoch``'s token-budget steps over ``lanes`` lanes, and the rows it leaves out."""
        key = (epoch, lanes)
        if key not in self._plans:
            per_lane = self._per_lane.get(lanes)
            if per_lane is None and epoch != 0:
                per_lane = self._per_lane.setdefault(lanes, self.plan_of(0, lanes)[0].num_steps // lanes)
            o, store = self.options, self.store
            order = store.epoch_order(
                seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window, lanes=lanes, batch_size=o.batch_size
            )
            lane_rows = [order.lane_rows(k, np.arange(int(size))) for k, size in enumerate(order.lane_sizes)]
            lengths = self.lengths
            rules = Rules(Budget(o.batch_tokens, o.batch_size, o.max_images), o.window, o.shuffle, o.seed)
            planned = plan_epoch(lane_rows, lengths.tokens, lengths.images, rules, epoch=epoch, per_lane=per_lane)
            if per_lane is None:
                self._per_lane[lanes] = planned[0].num_steps // lanes
            self._plans = {k: v for k, v in self._plans.items() if k[0] >= epoch - 1}  # this pass's and the last
            self._plans[key] = planned
        return self._plans[key]

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


def _check_fits(lengths: RowLengths, options: _Options, store: Any) -> None:
    """Every row fits one step: its tokens within ``batch_tokens``, its images within ``max_images``."""
    for what, values, cap, name in (
        ("tokens", lengths.tokens, options.batch_tokens, "batch_tokens"),
        ("images", lengths.images, options.max_images, "max_images"),
    ):
        if values is None or cap is None:
            continue
        over = np.flatnonzero(values > cap)
        if len(over):
            first = int(over[0])
            raise RowTooLongError(
                f"{store.describe(first)} has {int(values[first])} {what}, more than {name}={cap} allows in one step "
                f"({len(over)} rows are over it, the longest {int(values[over].max())}); raise {name}, or cut such rows "
                "before training (truncate them, or drop them with a Source of the rest)"
            )
