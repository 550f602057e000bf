"""The plan of a worker's pass: which rows each of its steps holds.

The order (``order.py``) decides which row sits at each position of the epoch; the layout
(``split.py``) which positions form each rank's step; a plan walks this worker's steps and
fetches their rows from the store. Three plans, one per kind of source:

- :func:`random_access_plan`: rows read by index (arrow, parquet, ``datasets`` objects); a store
  that reads ahead is told the rows of the next window's batches.
- :func:`stream_plan`: a stream read front to back by every reader; every reader sees the whole
  stream, so all ranks learn its end at the same step.
- :func:`lane_plan`: a stream whose shards are dealt to lanes; a worker reads only its lanes.
- :func:`budget_plan`: random access with token-budget steps: the planner (``budget.py``) has
  decided which rows form each step; a worker fetches its steps' rows.
- :func:`block_plan`: random access cut into fixed token blocks (``blocks.py``): a step's rows
  are those its token range overlaps, and the step says where its tokens begin in them.

Each yields :class:`PlannedStep` values; the dataset decodes, transforms and collates them.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .blocks import BlockLayout
from .budget import BudgetLayout
from .decode import Rows
from .order import shard_lanes
from .progress import PassStart
from .split import Layout
from .stores.stream import StreamWindows

__all__ = [
    "PlannedStep",
    "Reader",
    "block_plan",
    "budget_plan",
    "lane_plan",
    "plan",
    "random_access_plan",
    "stream_plan",
    "take",
]


@dataclass(frozen=True)
class Reader:
    """Who reads: this rank of ``world_size``, this worker of ``num_workers``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1


@dataclass(frozen=True)
class PlannedStep:
    """One local step: its rows (``None``: a lane that ran out, a hole), how errors name a row,
    the key its random draws are seeded by, and a stream lane's resume anchor."""

    step: int
    rows: Rows | None
    describe: Callable[[int], str]
    key: tuple[int, ...]
    anchor: tuple[int, int, int] | None = None
    # Token blocks: (offset into the rows' tokens, blocks, block size, each row's expected tokens).
    cut: tuple[int, int, int, np.ndarray] | None = None


def plan(
    store: Any, options: Any, layout_of: Callable[[PassStart], Any], at: PassStart, reader: Reader
) -> Iterator[PlannedStep]:
    """The steps of ``reader``'s pass that starts at ``at``."""
    if store.random_access:
        layout = layout_of(at)
        if isinstance(layout, BudgetLayout):
            return budget_plan(store, options, layout, at, reader)
        if isinstance(layout, BlockLayout):
            return block_plan(store, options, layout, layout.lengths, at, reader)
        return random_access_plan(store, options, layout, at, reader)
    if at.lanes > 1:
        return lane_plan(store, options, at, reader)
    return stream_plan(store, options, at, reader)


def take(store: Any, rows: np.ndarray) -> Rows:
    """The rows at ``rows`` (indices), with numeric columns as numpy where the store has them."""
    if not len(rows):
        return Rows.empty()  # an evaluation rank's empty last batch (split.EvalLayout): nothing to read
    table, arrays = store.take_arrays(rows)
    return Rows(table, arrays, len(rows))


def random_access_plan(store: Any, options: Any, layout: Any, at: PassStart, reader: Reader) -> Iterator[PlannedStep]:
    o = options
    order = store.epoch_order(
        seed=o.seed, epoch=at.epoch, shuffle=o.shuffle, window=o.window, lanes=at.lanes, batch_size=o.batch_size
    )
    splits = 1 if o.in_order else reader.num_workers

    def rows_of(step: int) -> np.ndarray:
        a, b = layout.batch_range(step, reader.rank, splits)
        positions = np.arange(a, b)
        return order.rows(positions % store.num_rows if b > store.num_rows else positions)  # pad=True wraps

    steps = range(reader.worker, layout.num_steps, reader.num_workers)
    for step, rows in _read_ahead(store, o, steps, rows_of, o.batch_size):
        first = layout.batch_range(step, reader.rank, splits)[0]
        yield PlannedStep(step, take(store, rows), lambda i, rows=rows: store.describe(int(rows[i])), (at.epoch, first))


def budget_plan(store: Any, options: Any, layout: BudgetLayout, at: PassStart, reader: Reader) -> Iterator[PlannedStep]:
    def rows_of(step: int) -> np.ndarray:
        return layout.rows(*layout.batch_range(step, reader.rank))

    steps = range(reader.worker, layout.num_steps, reader.num_workers)
    per_step = max(1, layout.plan.num_rows // max(1, layout.plan.num_steps))
    for step, rows in _read_ahead(store, options, steps, rows_of, per_step):
        g = layout.global_step(step, reader.rank)
        yield PlannedStep(step, take(store, rows), lambda i, rows=rows: store.describe(int(rows[i])), (at.epoch, g))


def block_plan(
    store: Any, options: Any, layout: BlockLayout, lengths: np.ndarray, at: PassStart, reader: Reader
) -> Iterator[PlannedStep]:
    blocks = layout.blocks

    def span(step: int) -> tuple[int, int, int]:
        return blocks.rows_of(*blocks.token_range(layout.batch_range(step, reader.rank)[0]))

    def rows_of(step: int) -> np.ndarray:
        i, j, _ = span(step)
        return blocks.rows[i:j]

    steps = range(reader.worker, layout.num_steps, reader.num_workers)
    per_step = max(1, len(blocks.rows) // max(1, blocks.num_batches))
    for step, rows in _read_ahead(store, options, steps, rows_of, per_step):
        g = layout.batch_range(step, reader.rank)[0]
        cut = (span(step)[2], blocks.per_batch, blocks.block_size, lengths[rows])
        describe = lambda i, rows=rows: store.describe(int(rows[i]))  # noqa: E731
        yield PlannedStep(step, take(store, rows), describe, (at.epoch, g), cut=cut)


def _read_ahead(
    store: Any, options: Any, steps: range, rows_of: Callable[[int], np.ndarray], rows_per_step: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(step, rows)`` for each of ``steps``; a store that reads ahead is told the next batches' rows."""
    if not store.reads_ahead:
        yield from ((step, rows_of(step)) for step in steps)
        return
    # A window's worth of this reader's batches (its row groups are needed together), and as many
    # again as the store keeps requests in flight: the next window is fetched while this one is used.
    depth = max(1, -(-(options.window + store.read_ahead_rows) // rows_per_step))
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


def stream_plan(store: Any, options: Any, at: PassStart, reader: Reader) -> Iterator[PlannedStep]:
    o = options
    start, world_size = at.start, reader.world_size
    windows = StreamWindows(store, seed=o.seed, epoch=at.epoch, shuffle=o.shuffle, window=o.window)
    step_rows = o.batch_size * world_size
    step = reader.worker
    while True:
        # Every reader sees the whole stream, so all ranks learn its end at the same step.
        if not windows.available(start + (step + 1) * step_rows - 1):
            if windows.num_rows <= start:
                return  # resumed at (or past) the end of this epoch's stream
            layout = Layout(windows.num_rows, start, o.batch_size, world_size, o.drop_last)
            if step >= layout.num_steps:
                return
        else:
            layout = Layout(start + (step + 1) * step_rows, start, o.batch_size, world_size, o.drop_last)
        a, b = layout.batch_range(step, reader.rank)
        yield PlannedStep(step, Rows.of(windows.take(a, b)), lambda i, a=a: store.describe(a + i), (at.epoch, a))
        step += reader.num_workers


def lane_plan(store: Any, options: Any, at: PassStart, reader: Reader) -> Iterator[PlannedStep]:
    """A stream whose shards are dealt to lanes: this worker reads only the lanes of its batches.

    Step ``s`` of rank ``r`` is the epoch's batch ``g = start // batch_size + s * world_size + r``,
    batch ``g // lanes`` of lane ``g % lanes``. A lane's length is known only once it has been
    read, so lanes of unequal lengths leave holes: batches whose lane has run out. One rank
    skips them (an empty step, so positions keep their meaning) until all its lanes are done.
    Several ranks must take the same number of steps, so there the epoch ends at the first
    hole: this worker stops, and the loaders of all ranks agree on that step
    (``epoch_end.EpochEnd``); the rows the longer lanes still had are not used.
    """
    o, lanes = options, at.lanes
    shards = shard_lanes(store.num_shards, lanes, seed=o.seed, epoch=at.epoch, shuffle=o.shuffle)
    first = at.start // o.batch_size

    def lane_of(step: int) -> tuple[int, int]:
        g = first + step * reader.world_size + reader.rank
        return g % lanes, (g // lanes) * o.batch_size

    span = range(reader.worker, reader.worker + reader.num_workers * lanes, reader.num_workers)
    mine = {lane_of(step)[0] for step in span}
    readers: dict[int, StreamWindows] = {}
    ended: set[int] = set()
    for step in itertools.count(reader.worker, reader.num_workers):
        lane, a = lane_of(step)
        windows = readers.get(lane)
        if windows is None:
            begin = tuple(at.anchors[lane]) if at.anchors is not None else (0, 0)
            windows = readers[lane] = StreamWindows(
                store,
                seed=o.seed,
                epoch=at.epoch,
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
            yield PlannedStep(step, Rows.of(windows.take(a, b)), describe, (at.epoch, a, lane), anchor)
            continue
        ended.add(lane)
        if reader.world_size > 1 or ended >= mine:
            return
        yield PlannedStep(step, None, lambda i: store.where, (at.epoch, a, lane))
