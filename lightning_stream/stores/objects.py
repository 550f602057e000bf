"""Stores for the ``datasets`` objects users already hold (:class:`~lightning_stream.spec.DatasetSource`).

- A ``Dataset`` is read by index from its arrow table, through its indices mapping when it has
  one; a format (``with_format``, ``with_transform``) is applied to each batch in the workers.
- An ``IterableDataset`` whose rows come from files that can be read by index
  (``Dataset.to_iterable_dataset``, ``load_dataset("parquet"|"arrow", streaming=True)``) is read
  by index from those files: known length, O(1) resume. Its own chain (``map``, ``filter``,
  ``select_columns``, ``rename_column``, ``remove_columns``, ``cast_column``, formatting) is
  replayed by ``datasets`` itself on each batch's rows, in the worker: once per row, never on
  rows a resume skips. Its ``shuffle()`` is replaced by ours (logged once). Any other
  ``IterableDataset`` (a generator, json lines) is read front to back as a stream
  (:class:`ObjectStream`), its chain running as it reads and its own shuffle following the epoch.

``datasets`` has no public API to take a chain apart, so this module reads a few private
attributes of ``IterableDataset`` (``_ex_iterable``, ``_distributed``) and of its examples
iterables (``ex_iterable``, ``generate_tables_fn``, ``kwargs``), and of ``Dataset``
(``_indices``, ``_fingerprint``). They are confined here; ``tests/test_objects.py`` pins them, so a
``datasets`` release that moves them fails there, by name, rather than anywhere else.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import datasets
import datasets.iterable_dataset as _ids
import numpy as np
import pyarrow as pa
from datasets.iterable_dataset import ArrowExamplesIterable, BufferShuffledExamplesIterable

from ..spec import DatasetSource, Source
from .arrow import ArrowStore
from .base import fingerprint
from .parquet import ParquetStore
from .stream import StreamStore

log = logging.getLogger(__name__)

# The shuffles a chain may hold (ours replaces them); shard interleaving came with datasets 5.1.
_SHUFFLES: tuple[type, ...] = tuple(
    cls for cls in (BufferShuffledExamplesIterable, getattr(_ids, "InterleavedShardsExamplesIterable", None)) if cls
)

__all__ = ["ChainStore", "ObjectStream", "SliceStore", "open_dataset", "sliced"]


def open_dataset(spec: DatasetSource, *, cache_rows: int, cache_windows: int = 2) -> Any:
    """The store that reads ``spec.dataset`` (random access wherever its rows allow it)."""
    ds = spec.dataset
    if isinstance(ds, datasets.Dataset):
        return _dataset_store(ds, spec.path)
    if isinstance(ds, datasets.IterableDataset):
        return _iterable_store(ds, spec.path, {"cache_rows": cache_rows, "cache_windows": cache_windows})
    raise TypeError(f"expected a datasets.Dataset or IterableDataset, got {type(ds).__name__}")


# -- Dataset --------------------------------------------------------------------------------------
def _dataset_store(ds: datasets.Dataset, where: str) -> Any:
    mapping = getattr(ds, "_indices", None)  # private: the indices mapping of shuffle/select/filter
    indices = mapping.column(0).to_numpy().astype(np.int64) if mapping is not None else None
    if indices is not None:
        log.info(
            "%s has an indices mapping (shuffle/select/filter): its rows are read in that order, then shuffled each epoch",
            where,
        )
    store = ArrowStore.from_dataset(
        ds, where, indices, fingerprint(["dataset", getattr(ds, "_fingerprint", None), len(ds)])
    )
    fmt = ds.format
    if fmt["type"] is None:
        return store
    return ChainStore(store, _Format(fmt, ds.features), f"format {fmt['type']!r}")


class _Format:
    """A ``Dataset``'s format (``with_format``/``with_transform``) applied to a batch's arrow rows."""

    def __init__(self, fmt: dict, features: datasets.Features) -> None:
        self.fmt, self.features = fmt, features

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        from datasets.formatting import format_table, get_formatter

        f = self.fmt
        formatter = get_formatter(f["type"], features=self.features, **f["format_kwargs"])
        out = format_table(
            table,
            range(table.num_rows),
            formatter,
            format_columns=f["columns"],
            output_all_columns=f["output_all_columns"],
        )
        return dict(out)


# -- IterableDataset ------------------------------------------------------------------------------
def _iterable_store(ids: datasets.IterableDataset, where: str, cache: dict) -> Any:
    if getattr(ids, "_distributed", None) is not None:
        raise ValueError(
            f"{where} was split with split_dataset_by_node: pass the whole IterableDataset, StreamingDataModule "
            "splits it over ranks and workers itself (every rank the same number of steps)"
        )
    nodes, base = _chain_of(ids, where)
    base_store = _base_store(base, where, cache) if base is not None else None
    if base_store is None:
        return ObjectStream(ids, where)
    if not nodes:
        return base_store
    replay = _Replay(ids, nodes)
    return ChainStore(base_store, replay, replay.describe())


def _chain_of(ids: datasets.IterableDataset, where: str) -> tuple[list[Any], Any]:
    """The chain's nodes above its base, outermost first (shuffles dropped), and the base iterable."""
    nodes, shuffled = [], False
    node = ids._ex_iterable
    while hasattr(node, "ex_iterable"):
        if isinstance(node, _SHUFFLES):
            shuffled = True
        else:
            nodes.append(node)
        node = node.ex_iterable
    if not isinstance(node, ArrowExamplesIterable):
        return nodes, None  # a generator, json lines...: read front to back (ObjectStream)
    unsupported = [type(n).__name__ for n in nodes if type(n).__name__ in _NOT_REPLAYED]
    if unsupported:
        raise ValueError(
            f"{where} has {', '.join(unsupported)} in its chain (skip/take/shard/interleave), which would change which "
            "rows an epoch holds: use Source(split='train[a:b]') slicing, or pass the dataset without them"
        )
    if shuffled:
        log.info(
            "%s: its shuffle() is replaced by StreamingDataModule's (seed, epoch) shuffle, which resumes exactly", where
        )
    return nodes, node


class ObjectStream(StreamStore):
    """An ``IterableDataset`` whose rows cannot be read by index (a generator, json lines...),
    read front to back, shard by shard, as any stream (``stream.py``): its chain runs as it reads.

    Its own ``shuffle()`` is honoured: ``set_epoch(epoch)`` is called on it before each epoch, so
    its shuffle is a function of its seed and the epoch, and a resume, which reads the lane again
    from a shard's start, sees the same rows. Ours is applied on top.
    """

    def __init__(self, ids: datasets.IterableDataset, where: str) -> None:
        self._user = ids
        self._epoch = 0
        self._arrow = True
        self._ids = None
        self.where = where
        self.num_shards = ids.num_shards
        self.features = ids.features
        self.num_rows = None
        self.fingerprint = fingerprint(["object-stream", where, ids.num_shards, str(ids.features)])
        log.info(
            "%s is read front to back (its rows cannot be read by index); its own shuffle, if any, is kept and "
            "follows the epoch (set_epoch)",
            where,
        )

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def read_shard(self, index: int) -> Iterator[pa.Table]:
        # The object reads its own files (with datasets' own retries): no re-read around it here.
        return self._read_shard(index)

    def _stream(self) -> datasets.IterableDataset:
        self._user.set_epoch(self._epoch)
        return self._user


_NOT_REPLAYED = {"SkipExamplesIterable", "TakeExamplesIterable", "StepExamplesIterable", "RepeatExamplesIterable"}


def _base_store(base: ArrowExamplesIterable, where: str, cache: dict) -> Any:
    fn, kwargs = base.generate_tables_fn, base.kwargs
    if getattr(fn, "__qualname__", "") == "Dataset._generate_tables_from_shards":
        shards = kwargs["shards"]
        ds = datasets.concatenate_datasets(shards) if len(shards) > 1 else shards[0]
        return _dataset_store(ds.with_format(None), where)
    builder = getattr(fn, "__self__", None)
    files = kwargs.get("files")
    if builder is None or not files or any(g is not None for g in kwargs.get("row_groups_list", [None])):
        return None
    files = [str(f) for f in files]
    name = getattr(builder, "name", None)
    if name == "parquet":
        return ParquetStore(Source(path="parquet", data_files=files), **cache)
    if name == "arrow":
        return ArrowStore(Source(path="arrow", data_files=files))
    return None


def _describe_base(base: Any) -> str:
    fn = getattr(base, "generate_tables_fn", None) or getattr(base, "generate_examples_fn", None)
    return f"{type(base).__name__}({getattr(fn, '__qualname__', fn)})"


def _one_table(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    yield "batch", table


class _Replay:
    """The user's chain, re-rooted on one batch's rows and run by ``datasets``."""

    def __init__(self, ids: datasets.IterableDataset, nodes: list[Any]) -> None:
        self.ids, self.nodes = ids, nodes

    def describe(self) -> str:
        names = []
        for n in reversed(self.nodes):
            fn = getattr(n, "function", None)
            fn = getattr(fn, "args", (None,))[0] if hasattr(fn, "func") and getattr(fn, "args", None) else fn
            names.append(
                f"{type(n).__name__}({getattr(fn, '__qualname__', '')})" if fn is not None else type(n).__name__
            )
        return " -> ".join(names)

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        child: Any = ArrowExamplesIterable(_one_table, kwargs={"table": table})
        for node in reversed(self.nodes):
            node = copy.copy(node)
            node.ex_iterable = child
            child = node
        # Not copy.copy: IterableDataset.__getstate__ returns its own __dict__, so a copy would share it.
        ids = object.__new__(type(self.ids))
        ids.__dict__ = {**self.ids.__dict__, "_ex_iterable": child}
        out: dict[str, list] = {}
        for batch in ids.iter(batch_size=max(1, table.num_rows)):
            for k, v in batch.items():
                out.setdefault(k, []).extend(v if isinstance(v, list) else list(v))
        return out


class _Forwarding:
    """A store built on another (``_base``): each member of the store contract forwarded by name,
    so that a member added to the contract later is a decision here, not a silent pass-through."""

    _base: Any

    random_access = property(lambda self: self._base.random_access)
    features = property(lambda self: self._base.features)
    num_rows = property(lambda self: self._base.num_rows)
    where = property(lambda self: self._base.where)
    fork_safe = property(lambda self: self._base.fork_safe)
    portable = property(lambda self: self._base.portable)
    block_lengths = property(lambda self: self._base.block_lengths)
    reads_ahead = property(lambda self: self._base.reads_ahead)
    read_ahead_rows = property(lambda self: self._base.read_ahead_rows)

    def take(self, rows: np.ndarray) -> pa.Table:
        return self._base.take(rows)

    def describe(self, row: int) -> str:
        return self._base.describe(row)

    def epoch_order(self, **kwargs: Any) -> Any:
        return self._base.epoch_order(**kwargs)

    def read_ahead(self, rows: list[np.ndarray]) -> None:
        self._base.read_ahead(rows)

    def take_arrays(self, rows: np.ndarray) -> tuple[pa.Table | None, dict[str, np.ndarray]]:
        return self.take(rows), {}  # no numpy fast path: a chain takes arrow rows


class ChainStore(_Forwarding):
    """A store whose rows go through a per-batch function (``chain``) before the pipeline.

    Everything else is the base store's; the fast numpy path is not offered, since the chain
    takes arrow rows.
    """

    def __init__(self, base: Any, chain: Any, what: str) -> None:
        self._base, self.chain, self.what = base, chain, what
        self.fingerprint = fingerprint([base.fingerprint, what])


def sliced(store: Any, split: str, where: str) -> Any:
    """``store`` cut to the rows that ``datasets``' split slicing names (``"train[:90%]"``)."""
    if store.num_rows is None or not store.random_access:
        raise ValueError(
            f"{where}: split={split!r} slices rows, which needs a source that knows its length (parquet, arrow, "
            "save_to_disk, a Dataset); this one is a stream. Filter it instead, e.g. filter=lambda b: ..."
        )
    name = split.partition("[")[0]
    try:
        instruction = datasets.ReadInstruction.from_spec(split)
        (absolute,) = instruction.to_absolute({name: store.num_rows})
    except (ValueError, AssertionError) as err:
        raise ValueError(
            f"{where}: split={split!r} is not datasets' slicing syntax ('train[:90%]', 'train[1000:]'): {err}"
        ) from err
    return SliceStore(store, absolute.from_, absolute.to, split)


class SliceStore(_Forwarding):
    """Rows ``[start, stop)`` of a random-access store, as a store of their own.

    Its base's read-ahead is not used (the base would plan rows the slice never takes).
    """

    num_rows = where = block_lengths = None  # set per instance below
    reads_ahead, read_ahead_rows = False, 0
    chain = property(lambda self: self._base.chain)

    def __init__(self, base: Any, start: int, stop: int, split: str) -> None:
        self._base, self.start, self.stop = base, int(start), int(stop)
        self.num_rows = self.stop - self.start
        self.fingerprint = fingerprint([base.fingerprint, split, self.start, self.stop])
        self.where = f"{base.where}[{self.start}:{self.stop}]"
        self.block_lengths = _cut(base.block_lengths, self.start, self.stop)

    def read_ahead(self, rows: list[np.ndarray]) -> None:
        """No read-ahead (see the class)."""

    def take(self, rows: np.ndarray) -> pa.Table:
        return self._base.take(np.asarray(rows) + self.start)

    def describe(self, row: int) -> str:
        return self._base.describe(row + self.start)

    def epoch_order(self, **kwargs: Any) -> Any:
        from ..order import EpochOrder

        return EpochOrder(self.block_lengths, **kwargs)


def _cut(blocks: list[int], start: int, stop: int) -> list[int]:
    """Block lengths of ``[start, stop)`` of a sequence of blocks (the rows keep their blocks)."""
    out, at = [], 0
    for n in blocks:
        a, b = max(at, start), min(at + n, stop)
        if b > a:
            out.append(b - a)
        at += n
    return out
