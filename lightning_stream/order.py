"""The sample order of an epoch as a pure function of (seed, epoch, block sizes).

Rows live in *blocks*: contiguous ranges of the source (parquet row groups, slices of an arrow
file, whole files of a stream). An epoch's order is built in two steps:

1. shuffle the block order with ``rng(seed, epoch)``;
2. cut the resulting row sequence into *windows* of ``window`` rows and shuffle the rows inside
   each window with ``rng(seed, epoch, window_index)``.

Nothing here depends on the world size or the number of workers, so an epoch position (an
integer in ``[0, num_rows)``) means the same row whatever the topology: resume is a jump and a
change of world size can resume exactly. Only one window permutation is held at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EpochOrder", "block_permutation", "window_permutation"]

# Keeps the window streams of an epoch apart from its block-order stream.
_WINDOW_DOMAIN = 0x5EED


def block_permutation(num_blocks: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order in which the blocks are read in ``epoch``."""
    if not shuffle:
        return np.arange(num_blocks, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_blocks).astype(np.int64)


def window_permutation(size: int, *, seed: int, epoch: int, window_index: int) -> np.ndarray:
    """Permutation of the ``size`` rows of window ``window_index`` in ``epoch``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _WINDOW_DOMAIN, window_index]))
    return rng.permutation(size).astype(np.int64)


class EpochOrder:
    """Maps epoch positions to source row indices for one epoch of a random-access source.

    Args:
        block_lengths: rows in each block, in source order; block ``i`` holds source rows
            ``sum(block_lengths[:i]) ... + block_lengths[i]``.
        seed: shuffle seed.
        epoch: epoch number.
        shuffle: when False the order is the source order.
        window: rows per shuffle window (at least the user's ``buffer_size``).

    Example:
        >>> order = EpochOrder([3, 3], seed=0, epoch=0, shuffle=False, window=4)
        >>> order.rows(np.arange(6)).tolist()
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(self, block_lengths: Sequence[int], *, seed: int, epoch: int, shuffle: bool, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        lengths = np.asarray(block_lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        perm = block_permutation(len(lengths), seed=seed, epoch=epoch, shuffle=shuffle)
        self.num_rows = int(lengths.sum())
        self.seed, self.epoch, self.shuffle, self.window = seed, epoch, shuffle, window
        self._src_start = starts[perm]
        self._seq_end = np.cumsum(lengths[perm])
        self._seq_start = self._seq_end - lengths[perm]
        self._cached: dict[int, np.ndarray] = {}

    def _window(self, w: int) -> np.ndarray:
        perm = self._cached.get(w)
        if perm is None:
            size = min(self.window, self.num_rows - w * self.window)
            perm = window_permutation(size, seed=self.seed, epoch=self.epoch, window_index=w)
            # Positions only move forward, so the current and the previous window suffice.
            self._cached = {k: v for k, v in self._cached.items() if k == w - 1}
            self._cached[w] = perm
        return perm

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Source row index of each epoch position."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.num_rows):
            raise IndexError(f"epoch positions must lie in [0, {self.num_rows})")
        if not self.shuffle:
            return positions  # blocks in source order: positions are rows
        if positions.size and positions[0] // self.window == positions[-1] // self.window and (np.diff(positions) >= 0).all():
            w = int(positions[0]) // self.window  # the usual batch: ascending positions inside one window
            seq = w * self.window + self._window(w)[positions - w * self.window]
        else:
            seq = np.empty_like(positions)
            windows = positions // self.window
            for w in np.unique(windows):
                sel = windows == w
                base = int(w) * self.window
                seq[sel] = base + self._window(int(w))[positions[sel] - base]
        block = np.searchsorted(self._seq_end, seq, side="right")
        return self._src_start[block] + (seq - self._seq_start[block])
