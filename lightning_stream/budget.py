"""Token-budget steps: which rows form each step when a step is a budget of tokens, not of rows.

The order (``order.py``) decides which rows an epoch visits and in what sequence; this planner
decides which *step* each of them joins. It needs every row's length before the transform runs
(``lengths.py``), and plans the whole epoch at once, so that ``len()`` is the steps the epoch
takes before it starts and a resume re-derives any step from the epoch and the position alone.

The plan, for each lane of the order (one per reader: a reader reads only its lane's blocks):

1. cut the lane's rows into windows of ``window`` rows (the shuffle window: the rows a reader
   holds, read from a few blocks);
2. pack each window *best-fit decreasing*: longest row first, each into the open step whose room
   left is the smallest that holds it (and that has room for its images and rows), else a new
   step; the last steps of a window are the only ones left part-empty;
3. shuffle the window's steps (seeded by seed, epoch, lane, window), so long rows do not always
   come first.

Every lane then holds the same number of steps ``per_lane``, the same in every epoch so that
``len()`` holds for all of them: epoch 0's longest lane plus a margin (:func:`margin`: two
standard deviations of a lane's token total, which varies with the rows an epoch deals it, and
the square root of its windows, whose last steps vary), so that another epoch's lanes, which pack
into a few more or fewer steps, fit. A lane with fewer steps splits its largest ones in two
(a half of a step always fits); one with more, which the margin makes rare, drops its smallest
steps, and their rows are counted as left out. Global step ``g`` is the ``g // lanes``-th step of lane
``g % lanes``: rank ``r`` of ``world_size`` takes ``g = s * world_size + r``, so with one lane per
reader each reader's steps come from its own lane (read-once locality, as with fixed batches).
The plan depends on the lanes, never on the world size: a resume on another topology re-plans
the same steps. The last ``lanes * per_lane % world_size`` steps are dropped to keep ranks even.

Positions count rows in *plan order* (the steps' rows one after another), so the checkpoint's
``position`` is still a row count: the rows of the steps trained so far.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from .order import step_permutation

__all__ = ["Budget", "BudgetLayout", "Plan", "RowTooLongError", "Rules", "margin", "pack_window", "plan_epoch"]


class RowTooLongError(ValueError):
    """A row's length is over the token budget: no step can hold it."""


@dataclass(frozen=True)
class Budget:
    """What one step may hold: ``tokens`` (``batch_tokens``), ``rows`` (``batch_size``), ``images``."""

    tokens: int
    rows: int
    images: int | None = None


@dataclass(frozen=True)
class Plan:
    """An epoch's steps: ``rows[bounds[g]:bounds[g + 1]]`` are the source rows of global step ``g``."""

    rows: np.ndarray
    bounds: np.ndarray
    tokens: np.ndarray  # tokens of each step

    @property
    def num_steps(self) -> int:
        return len(self.bounds) - 1

    @property
    def num_rows(self) -> int:
        return int(self.bounds[-1])


def pack_window(lengths: np.ndarray, images: np.ndarray | None, budget: Budget) -> list[list[int]]:
    """Best-fit decreasing: indices into ``lengths``, grouped into steps that fit ``budget``.

    Example:
        >>> pack_window(np.array([5, 3, 7, 2, 4]), None, Budget(tokens=10, rows=4))
        [[2, 1], [0, 4], [3]]
    """
    order = np.argsort(-lengths, kind="stable")
    steps: list[list[int]] = []
    room: list[int] = []  # tokens left in each step
    left_images: list[int] = []
    free: list[tuple[int, int]] = []  # (tokens left, step) of the steps that can take a row
    for i in order.tolist():
        n = int(lengths[i])
        k = 0 if images is None else int(images[i])
        at = bisect.bisect_left(free, (n, -1))
        while at < len(free) and budget.images is not None and left_images[free[at][1]] < k:
            at += 1  # best fit in tokens among the steps with room for the row's images
        if at < len(free):
            _, s = free.pop(at)
        else:
            s = len(steps)
            steps.append([])
            room.append(budget.tokens)
            left_images.append(budget.images if budget.images is not None else 0)
        steps[s].append(i)
        room[s] -= n
        left_images[s] -= k
        if len(steps[s]) < budget.rows and room[s] > 0:
            bisect.insort(free, (room[s], s))
    return steps


def _split(step: list[int]) -> tuple[list[int], list[int]]:
    half = (len(step) + 1) // 2
    return step[:half], step[half:]


def _even(steps: list[list[int]], count: int, lengths: np.ndarray) -> tuple[list[list[int]], int]:
    """``steps`` made ``count`` long: the smallest dropped, or the largest split in two; the rows dropped."""
    dropped = 0
    if len(steps) > count:
        size = [int(lengths[s].sum()) for s in steps]
        drop = set(sorted(range(len(steps)), key=lambda j: (size[j], j))[: len(steps) - count])
        dropped = sum(len(steps[j]) for j in drop)
        steps = [s for j, s in enumerate(steps) if j not in drop]
    while len(steps) < count:
        j = max(range(len(steps)), key=lambda j: (len(steps[j]), -j)) if steps else -1
        if j < 0 or len(steps[j]) < 2:
            break  # nothing left to split: fewer rows than steps (the caller checks)
        a, b = _split(steps[j])
        steps[j : j + 1] = [a, b]
    return steps, dropped


@dataclass(frozen=True)
class Rules:
    """How an epoch is planned: the step's ``budget``, the ``window`` packed at once, the shuffle."""

    budget: Budget
    window: int
    shuffle: bool
    seed: int


def plan_lane(
    rows: np.ndarray, lengths: np.ndarray, images: np.ndarray | None, rules: Rules, *, epoch: int, lane: int
) -> list[np.ndarray]:
    """The steps of one lane (source rows ``rows``, in the lane's order), window by window."""
    out: list[np.ndarray] = []
    for w, a in enumerate(range(0, len(rows), rules.window)):
        sel = rows[a : a + rules.window]
        steps = pack_window(lengths[sel], None if images is None else images[sel], rules.budget)
        if rules.shuffle:
            perm = step_permutation(len(steps), seed=rules.seed, epoch=epoch, window_index=w, lane=lane)
            steps = [steps[j] for j in perm]
        out.extend(sel[np.asarray(s, dtype=np.int64)] for s in steps)
    return out


def margin(lengths: np.ndarray, budget: Budget, lane_rows: int, windows: int) -> int:
    """How many more steps another epoch's lanes may need than this one's: two standard
    deviations of a lane's token total (a sample of ``lane_rows`` of the rows, without
    replacement: none with one lane, which holds them all), in steps, and as many steps as
    the square root of the lane's windows (each window's last steps are part-filled)."""
    n = len(lengths)
    if not n or lane_rows < 1:
        return 0
    sigma = float(np.std(lengths)) * np.sqrt(lane_rows * max(0.0, 1 - lane_rows / n))
    return int(np.ceil(2 * sigma / budget.tokens + np.sqrt(windows)))


def plan_epoch(
    lane_rows: list[np.ndarray],
    lengths: np.ndarray,
    images: np.ndarray | None,
    rules: Rules,
    *,
    epoch: int,
    per_lane: int | None = None,
) -> tuple[Plan, int]:
    """The epoch's :class:`Plan` from each lane's rows, and the rows it leaves out.

    ``per_lane``: the steps each lane must hold (``None``: as many as the lane with most, and
    :func:`margin` more, so that other epochs fit them too).
    """
    lanes = [plan_lane(rows, lengths, images, rules, epoch=epoch, lane=k) for k, rows in enumerate(lane_rows)]
    if per_lane is None:
        rows = max(len(r) for r in lane_rows)
        extra = margin(lengths, rules.budget, rows, -(-rows // rules.window))
        per_lane = max(1, max(len(s) for s in lanes)) + extra
    dropped = 0
    for k, steps in enumerate(lanes):
        lanes[k], d = _even(steps, per_lane, lengths)
        dropped += d
    steps = [lanes[k][j] for j in range(per_lane) for k in range(len(lanes)) if j < len(lanes[k])]
    sizes = np.fromiter((len(s) for s in steps), dtype=np.int64, count=len(steps))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate(steps) if steps else np.zeros(0, dtype=np.int64)
    tokens = np.fromiter((int(lengths[s].sum()) for s in steps), dtype=np.int64, count=len(steps))
    return Plan(flat, bounds, tokens), dropped


@dataclass(frozen=True)
class BudgetLayout:
    """The steps of a planned epoch (or the rest of one, from ``start``) over ranks.

    The same interface as :class:`~lightning_stream.split.Layout`, in plan-order positions.
    """

    plan: Plan
    start: int
    world_size: int = 1
    left_out: int = 0  # rows the plan itself left out (lanes made even)

    def __post_init__(self) -> None:
        at = int(np.searchsorted(self.plan.bounds, self.start))
        if at >= len(self.plan.bounds) or self.plan.bounds[at] != self.start:
            raise ValueError(f"position {self.start} is not the start of a planned step")

    @property
    def first(self) -> int:
        """The global step the layout starts at."""
        return int(np.searchsorted(self.plan.bounds, self.start))

    @property
    def num_rows(self) -> int:
        return self.plan.num_rows

    @property
    def batch_size(self) -> int:
        return 1  # positions advance by steps, not by a fixed number of rows

    @property
    def num_steps(self) -> int:
        return (self.plan.num_steps - self.first) // self.world_size

    @property
    def dropped_rows(self) -> int:
        end = self.first + self.num_steps * self.world_size
        return self.left_out + int(self.plan.bounds[-1] - self.plan.bounds[end])

    padded_rows = 0

    def batch_range(self, step: int, rank: int, num_workers: int = 1) -> tuple[int, int]:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        g = self.first + step * self.world_size + rank
        return int(self.plan.bounds[g]), int(self.plan.bounds[g + 1])

    def global_step(self, step: int, rank: int) -> int:
        return self.first + step * self.world_size + rank

    def rows(self, a: int, b: int) -> np.ndarray:
        return self.plan.rows[a:b]

    def position_after(self, steps: int) -> int:
        if steps >= self.num_steps:
            return self.num_rows
        return int(self.plan.bounds[self.first + steps * self.world_size])
