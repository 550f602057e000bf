"""Stores read the rows of a :class:`~lightning_stream.spec.Source` or a :class:`~lightning_stream.spec.Mix`.

:func:`open_store` is the only factory; it picks the kind from the spec:

- :class:`ArrowStore` for a ``save_to_disk`` folder or ``arrow`` files (memory-mapped ``datasets``
  objects, rows fetched by index);
- :class:`ParquetStore` for ``parquet`` files, or a hub id / local repo that ``datasets``
  resolves to parquet (row counts from the footers, rows fetched by reading their row group);
- :class:`MixtureStore` for a :class:`~lightning_stream.spec.Mix` of random-access sources;
- :class:`StreamStore` for everything else: hub ids with ``streaming=True``, json, csv,
  webdataset... read front to back;
- for a ``datasets`` object (:class:`~lightning_stream.spec.DatasetSource`), the store of the rows
  behind it (``objects.py``), with its ``map``/``filter`` chain or format as a ``chain`` that the
  workers run on each batch's arrow rows (a :class:`ChainStore`).

A ``split`` with ``datasets``' slicing (``"train[:90%]"``) gives a :class:`SliceStore` of those rows.

Random-access stores know their row count and block sizes up front; that is what makes the
length, the even split over ranks and an O(1) resume possible. The protocols below are the
whole contract a new kind has to keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import datasets
import numpy as np
import pyarrow as pa

from ..spec import DatasetSource, Mix, Source
from . import hub
from .arrow import ArrowStore
from .base import fingerprint, gather, select_columns
from .mixture import MixtureStore
from .objects import ChainStore, SliceStore, open_dataset, sliced
from .parquet import ParquetStore
from .resolve import STREAM_BUILDERS, builder_of, parquet_repo_files
from .stream import StreamStore, StreamWindows

__all__ = [
    "ArrowStore",
    "ChainStore",
    "SliceStore",
    "MixtureStore",
    "Order",
    "ParquetStore",
    "RandomAccessStore",
    "SequentialStore",
    "Store",
    "StreamStore",
    "StreamWindows",
    "fingerprint",
    "gather",
    "open_store",
    "select_columns",
]


class Store(Protocol):
    """What every store knows about its rows, whichever way they are read."""

    features: datasets.Features | None
    """The columns and their ``datasets`` types (None for a stream until its first rows)."""
    num_rows: int | None
    """Rows in the source (None for a stream of unknown length)."""
    fingerprint: str
    """A short hash of what the rows are; a checkpoint refuses to resume on other rows."""
    where: str
    """The source as a person would name it, for messages."""
    random_access: bool
    """True for a :class:`RandomAccessStore`, False for a :class:`SequentialStore`."""
    fork_safe: bool
    """Whether a forked worker may keep using the parent's store instead of opening its own."""
    portable: bool
    """Whether the store may be pickled to a worker, which then opens its own handles (no file
    listing, footer or feature inference again); otherwise a worker opens the source anew."""
    chain: Callable[[pa.Table], dict[str, Any]] | None
    """A ``datasets`` object's own ``map``/``filter``/format chain, run on each batch's arrow rows
    before the pipeline (it decodes them itself); None: rows are decoded by ``decode.py``."""

    def describe(self, row: int) -> str:
        """Where ``row`` comes from (file and row in it), for error messages."""
        ...


class Order(Protocol):
    """One epoch's order: epoch positions -> rows of the store."""

    num_rows: int
    """Positions in the epoch."""

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The store rows at ``positions``."""
        ...


class RandomAccessStore(Store, Protocol):
    """A store that fetches rows by index. ``base.BlockStore`` gives every optional member a
    default (no read-ahead, no numpy fast path), so a new kind writes only what it does better."""

    def take(self, rows: np.ndarray) -> pa.Table:
        """The rows at indices ``rows``, in that order."""
        ...

    def epoch_order(
        self, *, seed: int, epoch: int, shuffle: bool, window: int, lanes: int = 1, batch_size: int = 1
    ) -> Order:
        """The order of ``epoch`` cut into ``lanes`` read batch by batch (``order.py``)."""
        ...

    def take_arrays(self, rows: np.ndarray) -> tuple[pa.Table | None, dict[str, np.ndarray]]:
        """The rows at ``rows``: the columns it can give as numpy (zero-copy views where arrow
        allows), and the others as a table (None when every column is in the dict)."""
        ...

    reads_ahead: bool
    """Whether the store fetches rows before they are taken (remote parquet)."""
    read_ahead_rows: int
    """Rows the store keeps in flight ahead of use (0 when it does not read ahead)."""

    def read_ahead(self, rows: list[np.ndarray]) -> None:
        """The rows of the next batches, in the order they will be taken: start fetching them."""
        ...


class SequentialStore(Store, Protocol):
    """A store read front to back, shard by shard (:class:`StreamWindows` shuffles it)."""

    num_shards: int
    """Shards whose order is shuffled each epoch."""

    def read_shard(self, index: int) -> Iterator[pa.Table]:
        """The rows of shard ``index``, front to back, as arrow tables in ``features``' column order."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Told before each epoch (a user's ``IterableDataset`` shuffles by it; others ignore it)."""
        ...


def open_store(
    spec: Source | Mix | DatasetSource, *, cache_rows: int = 20_000, cache_windows: int = 2
) -> RandomAccessStore | SequentialStore:
    """Open the store that reads ``spec``: random access where the format allows it.

    ``cache_rows`` bounds the decoded parquet row groups kept per process: the rows of the
    ``cache_windows`` shuffle windows a reader holds at once (see :class:`ParquetStore`).
    """
    cache = {"cache_rows": cache_rows, "cache_windows": cache_windows}
    if isinstance(spec, DatasetSource):
        store = open_dataset(spec, **cache)
        return sliced(store, spec.split, spec.path) if "[" in spec.split else store
    if isinstance(spec, Source) and "[" in spec.split:
        whole = open_store(dataclasses.replace(spec, split=spec.split.partition("[")[0]), **cache)
        return sliced(whole, spec.split, spec.path)
    if isinstance(spec, Mix):
        return MixtureStore(spec, open_source=lambda s: open_store(s, **cache))
    kind = builder_of(spec)
    with hub.opening(spec):  # a hub id: the hub answers in bounded time or a clear error, SIGTERM heard
        if not spec.streaming:
            if kind in ("save_to_disk", "arrow"):
                return ArrowStore(spec)
            if kind == "parquet":
                return ParquetStore(spec, **cache)
            if kind is None and spec.path not in STREAM_BUILDERS:
                files = parquet_repo_files(spec)
                if files is not None:  # a hub or local parquet repo: random access by row group
                    return ParquetStore(spec, **cache, files=files)
        return StreamStore(spec)
