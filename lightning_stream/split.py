"""How the positions of an epoch are split into batches over ranks, then over workers.

Training advances in *global steps*: each step every rank takes one batch. Step ``s`` of an
epoch that (re)starts at position ``start`` covers positions
``[start + s * world_size * batch_size, ...)``, and rank ``r`` takes the ``r``-th slice of it.
The rows left over after the last full step are split evenly over the ranks when every rank
gets at least one; otherwise (fewer leftover rows than ranks, or ``drop_last``) they are dropped
and counted. Every rank therefore takes exactly the same number of steps, and at most
``world_size - 1`` rows (``world_size * batch_size - 1`` with ``drop_last``) are dropped per epoch.

With ``pad=True`` no row is dropped: ranks left without a row in the last step get a copy of one
of the epoch's first rows instead (positions past the end wrap around).

Inside a rank, local batch ``i`` is made by DataLoader worker ``i % num_workers``; the
DataLoader's in-order round robin then hands the batches back as ``0, 1, 2, ...`` whatever the
number of workers. Global step ``s`` thus gives rank ``r`` the ``(s * world_size + r)``-th batch
of the epoch, made by worker ``s % num_workers``: with an epoch order of ``world_size x
num_workers`` lanes interleaved batch by batch (``order.py``), every batch of a lane goes to the
same (rank, worker) reader, which reads that lane's blocks and no others.

Evaluation uses :class:`EvalLayout` instead: every row exactly once, nothing dropped or padded,
so metrics over a validation run are exact on any world size. Each rank reads a contiguous run,
cut into one contiguous piece per worker; the batches of a rank differ in size by at most one,
and at batch size 1 a rank may end one step before another (see :class:`EvalLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout", "EvalLayout"]


@dataclass(frozen=True)
class Layout:
    """The batch layout of one epoch (or of the rest of one, after a resume).

    Example:
        >>> lay = Layout(num_rows=10, start=0, batch_size=4, world_size=1, drop_last=False)
        >>> lay.num_steps, [lay.batch_range(s, 0) for s in range(lay.num_steps)]
        (3, [(0, 4), (4, 8), (8, 10)])
    """

    num_rows: int
    start: int
    batch_size: int
    world_size: int = 1
    drop_last: bool = False
    pad: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.start <= self.num_rows:
            raise ValueError(f"start position {self.start} is outside the epoch's {self.num_rows} rows")

    @property
    def step_rows(self) -> int:
        return self.batch_size * self.world_size

    @property
    def full_steps(self) -> int:
        return (self.num_rows - self.start) // self.step_rows

    @property
    def tail_rows(self) -> int:
        """Rows of the last, partial step (0 when it is dropped)."""
        rest = self.num_rows - self.start - self.full_steps * self.step_rows
        if self.drop_last or not rest:
            return 0
        if rest < self.world_size:
            return self.world_size if self.pad else 0
        return rest

    @property
    def num_steps(self) -> int:
        return self.full_steps + (1 if self.tail_rows else 0)

    @property
    def dropped_rows(self) -> int:
        """Rows of this epoch (after ``start``) that no rank will see."""
        return max(0, self.num_rows - self.start - self.full_steps * self.step_rows - self.tail_rows)

    @property
    def padded_rows(self) -> int:
        """Rows repeated in the last step so that every rank has one (``pad=True``)."""
        return max(0, self.start + self.full_steps * self.step_rows + self.tail_rows - self.num_rows)

    def batch_range(self, step: int, rank: int, num_workers: int = 1) -> tuple[int, int]:
        """Epoch positions ``[a, b)`` of ``rank``'s batch at global ``step`` (any worker's: the
        order's lanes, not this split, keep a worker's batches together)."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        if step < self.full_steps:
            a = self.start + step * self.step_rows + rank * self.batch_size
            return a, a + self.batch_size
        base = self.start + self.full_steps * self.step_rows
        q, r = divmod(self.tail_rows, self.world_size)
        a = base + rank * q + min(rank, r)
        return a, a + q + (1 if rank < r else 0)

    def position_after(self, steps: int) -> int:
        """Epoch position once ``steps`` global steps are done (all rows consumed after the last)."""
        if steps >= self.num_steps:
            return self.num_rows
        return self.start + steps * self.step_rows


@dataclass(frozen=True)
class EvalLayout:
    """Every row once, split into contiguous per-rank runs; no row is dropped, none is padded.

    Rank ``r`` reads rows ``[r * q + min(r, m), ...)``, ``q`` or ``q + 1`` of them (``q, m =
    divmod(num_rows, world_size)``), in ``num_steps = ceil(num_rows / (batch_size * world_size))``
    steps whose sizes differ by at most one and never exceed ``batch_size``. When the rows do not
    divide over the ranks at ``batch_size=1``, the ranks with ``q`` rows have one row fewer than
    steps: their last batch is empty, so they end one step before the others (the loader yields no
    empty batch, and ``len()`` is the longest rank's). Lightning allows that in evaluation: metrics
    logged with ``sync_dist=True`` (on_epoch) or as torchmetrics sync once, at the end of the run,
    and DDP's one collective in a forward without gradients (a buffer broadcast, in the first after
    training) comes at a step every rank makes. So every rank needs a row: a step, and its metrics.
    (A metric logged with ``on_step=True, sync_dist=True`` in ``validation_step`` would wait.)

    Example:
        >>> lay = EvalLayout(num_rows=1001, batch_size=10, world_size=2)
        >>> lay.num_steps, lay.batch_range(0, 1), lay.batch_range(50, 1)
        (51, (501, 511), (992, 1001))
    """

    num_rows: int
    batch_size: int
    world_size: int = 1
    start: int = 0
    dropped_rows: int = 0
    padded_rows: int = 0

    def __post_init__(self) -> None:
        if self.num_rows < self.world_size:
            raise ValueError(
                f"{self.num_rows} evaluation rows cannot be split over {self.world_size} ranks: every rank needs a row "
                "(a rank with no step would log no metric); evaluate on fewer ranks or on more rows"
            )

    @property
    def num_steps(self) -> int:
        return -(-self.num_rows // (self.batch_size * self.world_size))

    def _rank_rows(self, rank: int) -> tuple[int, int]:
        q, r = divmod(self.num_rows, self.world_size)
        start = rank * q + min(rank, r)
        return start, q + (1 if rank < r else 0)

    def batch_range(self, step: int, rank: int, num_workers: int = 1) -> tuple[int, int]:
        """Positions ``[a, b)`` of ``rank``'s batch at ``step``.

        The rank's run is cut into one contiguous piece per worker (worker ``k`` makes the steps
        ``k, k + num_workers, ...``), so each block is read by one worker, not by all of them.
        """
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        first, n = self._rank_rows(rank)
        q, r = divmod(n, self.num_steps)  # q = 0 only at batch size 1: this rank's last batch is empty

        k = max(1, num_workers)

        def made(worker: int, below: int) -> int:  # rows of ``worker``'s steps before step ``below``
            def count(stop: int) -> int:
                return max(0, -(-(stop - worker) // k))

            return q * count(below) + count(min(below, r))

        worker = step % k
        a = first + sum(made(j, self.num_steps) for j in range(worker)) + made(worker, step)
        return a, a + q + (1 if step < r else 0)
