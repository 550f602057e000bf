"""Fixed-size token blocks for pretraining: concatenate the epoch's rows, then cut.

As litdata's ``TokensLoader`` and litgpt's pretraining data do, the rows' tokens form one stream
and every step takes ``batch_size`` blocks of ``block_size`` tokens from it (litgpt passes
``block_size + 1`` to shift inputs and targets inside a block). Tokens carry across row and step
boundaries, so none is lost but the tail that does not fill a last step.

Nothing is carried in memory from one step to the next: every row's token count is known
before the transform (``lengths.py``), so a step's token range in the stream, the rows that
overlap it and the offset into the first of them follow from the step's index alone. A row cut
by a step boundary is read by both steps (each keeps its own part). A resume therefore needs only
the position, as for any other step: the "carried remainder" is re-derived, never stored.

The stream is the order's lanes one after another (each a contiguous run of the epoch's blocks);
it is cut into ``lanes`` runs of equal steps, and global batch ``g`` is batch ``g // lanes`` of
run ``g % lanes``: with one lane per reader, each reader reads one run (read-once locality, as
with row batches). Positions count batches of blocks in that interleaved order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BlockLayout", "Blocks"]


@dataclass(frozen=True)
class Blocks:
    """An epoch's token stream: source rows in stream order and each one's token offset."""

    rows: np.ndarray
    ends: np.ndarray  # cumulative tokens after each row of ``rows``
    block_size: int
    per_batch: int  # blocks per batch (``batch_size``)
    lanes: int

    @property
    def tokens(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def batch_tokens(self) -> int:
        return self.block_size * self.per_batch

    @property
    def per_lane(self) -> int:
        """Batches in each lane's run."""
        return self.tokens // self.batch_tokens // self.lanes

    @property
    def num_batches(self) -> int:
        return self.per_lane * self.lanes

    def token_range(self, g: int) -> tuple[int, int]:
        """The stream tokens ``[a, b)`` of global batch ``g``."""
        at = (g % self.lanes) * self.per_lane + g // self.lanes
        return at * self.batch_tokens, (at + 1) * self.batch_tokens

    def rows_of(self, a: int, b: int) -> tuple[int, int, int]:
        """Stream rows ``[i, j)`` that overlap tokens ``[a, b)``, and the offset of ``a`` in row ``i``."""
        i = int(np.searchsorted(self.ends, a, side="right"))
        j = int(np.searchsorted(self.ends, b, side="left")) + 1
        start = int(self.ends[i - 1]) if i else 0
        return i, min(j, len(self.rows)), a - start


@dataclass(frozen=True)
class BlockLayout:
    """Batches of blocks over ranks, from ``start``; :class:`~lightning_stream.split.Layout`'s
    interface, in positions that count batches."""

    blocks: Blocks
    start: int
    world_size: int = 1
    lengths: np.ndarray | None = None  # every source row's tokens (what a step's rows must yield)

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.num_rows:
            raise ValueError(f"start position {self.start} is outside the epoch's {self.num_rows} batches")

    @property
    def num_rows(self) -> int:
        return self.blocks.num_batches

    @property
    def num_steps(self) -> int:
        return (self.num_rows - self.start) // self.world_size

    @property
    def dropped_rows(self) -> int:
        return 0  # rows are never dropped whole; the stream's tail tokens are (``dropped_tokens``)

    padded_rows = 0

    @property
    def dropped_tokens(self) -> int:
        used = (self.start + self.num_steps * self.world_size) * self.blocks.batch_tokens
        return self.blocks.tokens - used if self.start == 0 else 0

    def batch_range(self, step: int, rank: int, num_workers: int = 1) -> tuple[int, int]:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        g = self.start + step * self.world_size + rank
        return g, g + 1

    def position_after(self, steps: int) -> int:
        if steps >= self.num_steps:
            return self.num_rows
        return self.start + steps * self.world_size
