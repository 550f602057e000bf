"""Weighted mixtures of sources, with ``datasets.interleave_datasets``' stopping strategies.

Where ``interleave_datasets`` draws a source at random for every row, a
:class:`~lightning_stream.spec.Mix` takes the *expected* number of rows from each source and
interleaves them in a random order. The realised mixture then equals the probabilities exactly,
the epoch has a fixed, known length, and the position in it is one integer again, so resume is
exact and cheap:

- ``first_exhausted``: ``L = min_i(n_i / p_i)`` rows, ``round(p_i * L)`` from source ``i`` (no row
  of any source is repeated);
- ``all_exhausted``: ``L = max_i(n_i / p_i)`` rows, every row of every source at least once
  (smaller sources are cycled, in the same epoch order).

The order itself (each source's own epoch order, cut into the same lanes, interleaved per lane)
is :class:`~lightning_stream.order.MixtureOrder`. The interleaving costs about 9 bytes per
mixture row of each lane a worker reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..order import MixtureOrder
from ..spec import Mix, Source, as_source
from .base import fingerprint, gather

if TYPE_CHECKING:  # the contract only; the factory that imports this module passes the opener in
    from . import Store

log = logging.getLogger(__name__)

__all__ = ["MixtureStore", "mixture_counts"]


def mixture_counts(sizes: list[int], probabilities: list[float], strategy: str) -> list[int]:
    """Rows taken from each source in one epoch."""
    p = np.asarray(probabilities, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    active = p > 0
    ratios = n[active] / p[active]
    total = ratios.min() if strategy == "first_exhausted" else ratios.max()
    if strategy == "first_exhausted":
        counts = np.minimum(np.floor(p * total + 1e-9), n)
    else:
        counts = np.where(active, np.maximum(np.ceil(p * total - 1e-9), n), 0)
    return [int(c) for c in counts]


class MixtureStore:
    """Random access into several random-access stores, mixed as :class:`Mix` says.

    ``open_source`` opens each of the mix's sources (``open_store`` passes itself, so this
    module does not import the factory that imports it).
    """

    random_access = True
    chain = None

    def __init__(self, mix: Mix, *, open_source: Callable[[Source], Store]) -> None:
        sources = [as_source(s) for s in mix.sources]  # the Mix checked its arguments when it was made
        probs = mix.probabilities or [1.0 / len(sources)] * len(sources)
        probs = [p / sum(probs) for p in probs]
        self.stores = [open_source(s) for s in sources]
        for i, (s, store) in enumerate(zip(sources, self.stores)):
            if not store.random_access:
                raise ValueError(
                    f"Mix needs random-access sources (parquet, arrow, save_to_disk); {s.path!r} is a stream"
                )
            if not store.num_rows:  # its share of the mixture could never be drawn
                raise ValueError(f"Mix source {i} ({store.where}) has 0 rows: remove it from the Mix or give it rows")
        columns = list(self.stores[0].features)
        for s, store in zip(sources[1:], self.stores[1:]):
            if list(store.features) != columns:
                raise ValueError(
                    f"Mix sources must have the same columns: {sources[0].path!r} has {columns}, {s.path!r} has {list(store.features)}"
                )
        # Holds nothing of its own per process: it travels as its sources do.
        self.fork_safe = all(store.fork_safe for store in self.stores)
        self.portable = all(store.portable for store in self.stores)
        self.names = [s.path if s.data_files is None else str(s.data_files) for s in sources]
        self.features = self.stores[0].features
        self.probabilities = probs
        self.counts = mixture_counts([s.num_rows for s in self.stores], probs, mix.stopping_strategy)
        self.offsets = np.concatenate([[0], np.cumsum([s.num_rows for s in self.stores])[:-1]]).astype(np.int64)
        self.num_rows = int(sum(self.counts))
        self.where = mix.path
        self.fingerprint = fingerprint([[s.fingerprint for s in self.stores], probs, mix.stopping_strategy])
        log.info("mixture per epoch: %s", ", ".join(f"{n}: {c} rows" for n, c in zip(self.names, self.counts)))

    def epoch_order(
        self, *, seed: int, epoch: int, shuffle: bool, window: int, lanes: int = 1, batch_size: int = 1
    ) -> MixtureOrder:
        return MixtureOrder(
            [s.block_lengths for s in self.stores],
            self.counts,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            window=window,
            lanes=lanes,
            batch_size=batch_size,
        )

    def _source_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def take(self, rows: np.ndarray) -> pa.Table:
        return gather(self._source_of(rows), lambda i, sel: self.stores[i].take(rows[sel] - self.offsets[i]))

    def take_arrays(self, rows: np.ndarray) -> tuple[pa.Table | None, dict[str, np.ndarray]]:
        return self.take(rows), {}

    @property
    def reads_ahead(self) -> bool:
        return any(store.reads_ahead for store in self.stores)

    @property
    def read_ahead_rows(self) -> int:
        return sum(store.read_ahead_rows for store in self.stores if store.reads_ahead)

    def read_ahead(self, rows: list[np.ndarray]) -> None:
        """Hand each source that reads ahead the rows of the next batches that are its own."""
        for i, store in enumerate(self.stores):
            if store.reads_ahead:
                own = [batch[self._source_of(batch) == i] - self.offsets[i] for batch in rows]
                store.read_ahead(own)

    def describe(self, row: int) -> str:
        i = int(self._source_of(np.array([row]))[0])
        return self.stores[i].describe(int(row - self.offsets[i]))
