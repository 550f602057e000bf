"""The sample order of an epoch as a pure function of (seed, epoch, block sizes, lanes, batch size).

Rows live in *blocks*: contiguous ranges of the source (parquet row groups, slices of an arrow
file). An epoch's order is built in three steps:

1. shuffle the block order with ``rng(seed, epoch)``;
2. cut the resulting row sequence into ``lanes`` contiguous *lanes* of (nearly) equal row
   counts, and shuffle the rows of each lane inside *windows* of ``window`` rows with
   ``rng(seed, epoch, window_index, lane)``;
3. interleave the lanes batch by batch (:class:`Lanes`): epoch position ``p`` lies in global
   batch ``g = p // batch_size``, which is batch ``g // lanes`` of lane ``g % lanes``. The rows
   left once the shortest lane has no full batch (the *tail*, fewer than
   ``lanes * (batch_size + 1)``) follow, lane after lane.

With ``lanes`` a multiple of ``world_size x num_workers``, the split (``split.py``: global step
``s`` gives rank ``r`` the batch ``s * world_size + r``, made by worker ``s % num_workers``)
hands every batch of a lane to the same reader, so each block is read by one reader per epoch
however many ranks and workers there are. The order does not depend on the world size or the
worker count: an epoch position means the same row on any topology, resume is a jump, and a
resume on another topology stays exact (with extra reads when ``lanes`` does not divide over the
new readers). With one lane the order is the plain block-then-window shuffle, whatever the batch
size. Only the current and the previous window of each lane are held.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "EpochOrder",
    "Lanes",
    "MixtureOrder",
    "block_permutation",
    "lane_sizes",
    "shard_lanes",
    "window_permutation",
]

# Keep the window and mixture streams of an epoch apart from its block-order stream.
_WINDOW_DOMAIN = 0x5EED
_MIX_DOMAIN = 0x313F
_STEP_DOMAIN = 0x57E9


def block_permutation(num_blocks: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order in which the blocks are read in ``epoch``."""
    if not shuffle:
        return np.arange(num_blocks, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_blocks).astype(np.int64)


def window_permutation(size: int, *, seed: int, epoch: int, window_index: int, lane: int = 0) -> np.ndarray:
    """Permutation of the ``size`` rows of window ``window_index`` of ``lane`` in ``epoch``."""
    # Lane 0 keeps the single-lane key, so one-lane orders (and their checkpoints) are unchanged.
    key = [seed, epoch, _WINDOW_DOMAIN, window_index] + ([lane] if lane else [])
    return np.random.default_rng(np.random.SeedSequence(key)).permutation(size).astype(np.int64)


def step_permutation(size: int, *, seed: int, epoch: int, window_index: int, lane: int = 0) -> np.ndarray:
    """Permutation of the ``size`` token-budget steps planned from window ``window_index`` of ``lane``."""
    key = [seed, epoch, _STEP_DOMAIN, window_index, lane]
    return np.random.default_rng(np.random.SeedSequence(key)).permutation(size).astype(np.int64)


def lane_sizes(num_rows: int, lanes: int) -> np.ndarray:
    """Rows of each lane when ``num_rows`` are cut into ``lanes`` nearly equal runs."""
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    q, r = divmod(num_rows, lanes)
    return np.array([q + (1 if lane < r else 0) for lane in range(lanes)], dtype=np.int64)


def shard_lanes(num_shards: int, lanes: int, *, seed: int, epoch: int, shuffle: bool) -> list[np.ndarray]:
    """The shards of each lane of a stream: the epoch's shard order cut into ``lanes`` runs of
    nearly equal shard counts (a stream's row counts are not known before it is read)."""
    perm = block_permutation(num_shards, seed=seed, epoch=epoch, shuffle=shuffle)
    return np.split(perm, np.cumsum(lane_sizes(num_shards, lanes))[:-1])


class Lanes:
    """Epoch positions <-> (lane, position in lane) for lanes read batch by batch, interleaved.

    Args:
        sizes: rows in each lane.
        batch_size: rows per batch.

    Example:
        >>> lanes = Lanes([5, 5], batch_size=2)
        >>> lane, at = lanes.locate(np.arange(10))
        >>> lane.tolist(), at.tolist()
        ([0, 0, 1, 1, 0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 2, 3, 2, 3, 4, 4])
    """

    def __init__(self, sizes: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.batch_size = batch_size
        self.num_rows = int(self.sizes.sum())
        self.rounds = int(self.sizes.min()) // batch_size if len(self.sizes) else 0  # full batches of every lane
        self.full_rows = self.rounds * len(self.sizes) * batch_size
        rest = self.sizes - self.rounds * batch_size
        self._tail_start = np.concatenate([[0], np.cumsum(rest)]).astype(np.int64)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lane and position inside the lane of each epoch position."""
        positions = np.asarray(positions, dtype=np.int64)
        n, b = len(self.sizes), self.batch_size
        if n == 1:
            return np.zeros_like(positions), positions
        g = positions // b
        lane, at = g % n, (g // n) * b + positions % b
        tail = positions >= self.full_rows
        if tail.any():
            k = positions[tail] - self.full_rows
            tail_lane = np.searchsorted(self._tail_start, k, side="right") - 1
            lane[tail] = tail_lane
            at[tail] = self.rounds * b + k - self._tail_start[tail_lane]
        return lane, at


class EpochOrder:
    """Maps epoch positions to source row indices for one epoch of a random-access source.

    Args:
        block_lengths: rows in each block, in source order; block ``i`` holds source rows
            ``sum(block_lengths[:i]) ... + block_lengths[i]``.
        seed: shuffle seed.
        epoch: epoch number.
        shuffle: when False the blocks keep the source order and rows are not shuffled.
        window: rows per shuffle window (at least the user's ``buffer_size``).
        lanes: contiguous runs of the block order read by different readers.
        batch_size: rows per batch (how the lanes interleave; irrelevant with one lane).

    Example:
        >>> order = EpochOrder([3, 3], seed=0, epoch=0, shuffle=False, window=4)
        >>> order.rows(np.arange(6)).tolist()
        [0, 1, 2, 3, 4, 5]
        >>> EpochOrder([3, 3], seed=0, epoch=0, shuffle=False, window=4, lanes=2, batch_size=2).rows(np.arange(6)).tolist()
        [0, 1, 3, 4, 2, 5]
    """

    def __init__(
        self,
        block_lengths: Sequence[int],
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        window: int,
        lanes: int = 1,
        batch_size: int = 1,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        lengths = np.asarray(block_lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        perm = block_permutation(len(lengths), seed=seed, epoch=epoch, shuffle=shuffle)
        self.num_rows = int(lengths.sum())
        self.seed, self.epoch, self.shuffle, self.window = seed, epoch, shuffle, window
        self.lane_sizes = lane_sizes(self.num_rows, lanes)
        self.lanes = Lanes(self.lane_sizes, batch_size)
        self._lane_start = np.concatenate([[0], np.cumsum(self.lane_sizes)[:-1]]).astype(np.int64)
        self._src_start = starts[perm]
        self._seq_end = np.cumsum(lengths[perm])
        self._seq_start = self._seq_end - lengths[perm]
        self._cached: dict[tuple[int, int], np.ndarray] = {}

    def _window(self, lane: int, w: int) -> np.ndarray:
        perm = self._cached.get((lane, w))
        if perm is None:
            size = min(self.window, self._shuffled_rows(lane) - w * self.window)
            perm = window_permutation(size, seed=self.seed, epoch=self.epoch, window_index=w, lane=lane)
            # A lane's positions only move forward: its current and previous window suffice.
            self._cached = {k: v for k, v in self._cached.items() if k[0] != lane or k[1] == w - 1}
            self._cached[(lane, w)] = perm
        return perm

    def _shuffled_rows(self, lane: int) -> int:
        # With several lanes, a lane's rest after its last full batch goes to the tail: it is left
        # out of the windows, so the tail reads a few contiguous rows per lane rather than rows
        # scattered over each lane's last window (which their owners have read already).
        if len(self.lane_sizes) == 1:
            return int(self.lane_sizes[0])
        return self.lanes.rounds * self.lanes.batch_size

    def lane_rows(self, lane: int, at: np.ndarray) -> np.ndarray:
        """Source rows at positions ``at`` inside ``lane``."""
        at = np.asarray(at, dtype=np.int64)
        if self.shuffle and at.size:
            limit = self._shuffled_rows(lane)
            if at[-1] < limit and at[0] // self.window == at[-1] // self.window and (np.diff(at) >= 0).all():
                w = int(at[0]) // self.window  # the usual batch: ascending positions inside one window
                at = w * self.window + self._window(lane, w)[at - w * self.window]
            else:
                at = at.copy()
                inside = at < limit
                windows = at // self.window
                for w in np.unique(windows[inside]):
                    sel = inside & (windows == w)
                    base = int(w) * self.window
                    at[sel] = base + self._window(lane, int(w))[at[sel] - base]
        seq = self._lane_start[lane] + at
        if not self.shuffle:
            return seq  # blocks in source order: sequence positions are rows
        block = np.searchsorted(self._seq_end, seq, side="right")
        return self._src_start[block] + (seq - self._seq_start[block])

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Source row index of each epoch position."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.num_rows):
            raise IndexError(f"epoch positions must lie in [0, {self.num_rows})")
        lane, at = self.lanes.locate(positions)
        if not positions.size or lane[0] == lane[-1] and (lane == lane[0]).all():
            return self.lane_rows(int(lane[0]) if positions.size else 0, at)
        out = np.empty_like(positions)
        for k in np.unique(lane):
            sel = lane == k
            out[sel] = self.lane_rows(int(k), at[sel])
        return out


class MixtureOrder:
    """Epoch positions of a mixture -> rows of its sources, concatenated.

    Source ``i`` gives ``counts[i]`` rows per epoch, cut over the lanes like its own rows are
    (lane ``k`` of the mixture draws from lane ``k`` of every source, so a reader still reads only
    its lanes' blocks). Inside a lane the sources are interleaved in a random order drawn from
    ``rng(seed, epoch, lane)``; each source keeps its own epoch order (seeded ``seed + 1 + i``).
    ``all_exhausted`` counts larger than a source cycle through its lane again.

    Example:
        >>> order = MixtureOrder([[4], [2, 2]], [4, 2], seed=0, epoch=0, shuffle=False, window=8)
        >>> sorted(order.rows(np.arange(6)).tolist())
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(
        self,
        block_lengths: Sequence[Sequence[int]],
        counts: Sequence[int],
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        window: int,
        lanes: int = 1,
        batch_size: int = 1,
    ) -> None:
        self._orders = [
            EpochOrder(lengths, seed=seed + 1 + i, epoch=epoch, shuffle=shuffle, window=window, lanes=lanes)
            for i, lengths in enumerate(block_lengths)
        ]
        self._offsets = np.concatenate([[0], np.cumsum([o.num_rows for o in self._orders])[:-1]]).astype(np.int64)
        self._counts = np.stack([lane_sizes(int(c), lanes) for c in counts])  # [source, lane]
        self.lanes = Lanes(self._counts.sum(axis=0), batch_size)
        self.num_rows = self.lanes.num_rows
        self.seed, self.epoch = seed, epoch
        self._labels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _lane_labels(self, lane: int) -> tuple[np.ndarray, np.ndarray]:
        """Source of each position of ``lane``, and its rank among that source's positions."""
        got = self._labels.get(lane)
        if got is None:
            counts = self._counts[:, lane]
            labels = np.repeat(np.arange(len(counts), dtype=np.int8), counts)
            key = [self.seed, self.epoch, _MIX_DOMAIN] + ([lane] if lane else [])  # lane 0: the one-lane key
            np.random.default_rng(np.random.SeedSequence(key)).shuffle(labels)
            index = np.empty(len(labels), dtype=np.int64)
            for i in range(len(counts)):
                where = np.nonzero(labels == i)[0]
                index[where] = np.arange(len(where))
            got = self._labels[lane] = (labels, index)
        return got

    def rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        lane, at = self.lanes.locate(positions)
        out = np.empty(len(positions), dtype=np.int64)
        for k in np.unique(lane):
            in_lane = lane == k
            labels, index = self._lane_labels(int(k))
            src, idx = labels[at[in_lane]], index[at[in_lane]]
            rows = np.empty(len(src), dtype=np.int64)
            for i in np.unique(src):
                sel = src == i
                order = self._orders[int(i)]
                size = int(order.lane_sizes[k])
                if size:
                    own = order.lane_rows(int(k), idx[sel] % size)
                else:  # a source with fewer rows than lanes: cycle through all of it
                    own = order.rows(idx[sel] % order.num_rows)
                rows[sel] = self._offsets[int(i)] + own
            out[in_lane] = rows
        return out
