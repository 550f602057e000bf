"""Where rows come from: the :class:`Source` spec and the stores that read it.

A :class:`Source` mirrors ``datasets.load_dataset``'s arguments. Opening it gives a *store*:

- :class:`ArrowStore` for a ``save_to_disk`` folder or ``arrow`` files (memory-mapped ``datasets``
  objects, rows fetched by index);
- :class:`ParquetStore` for local ``parquet`` files (row counts from the footers, rows fetched
  by reading the row group that holds them);
- a stream store (``streams.py``) for everything else: hub ids with ``streaming=True``, json,
  csv, webdataset... read front to back.

Random-access stores know their row count and block sizes up front; that is what makes the
length, the even split over ranks and an O(1) resume possible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasets
from datasets.features.features import require_decoding

from .columns import NumpyColumns
from .order import EpochOrder

log = logging.getLogger(__name__)

__all__ = ["Source", "ArrowStore", "ParquetStore", "as_source", "gather", "open_store"]

_EXT_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tar": "webdataset"}
_STREAM_BUILDERS = {"json", "csv", "text", "webdataset", "imagefolder", "audiofolder", "videofolder"}
# Rows per block when a random-access source has no natural blocks (arrow): the unit whose order
# is shuffled each epoch before rows are shuffled inside a window.
_ARROW_BLOCK_ROWS = 128


@dataclass
class Source:
    """A dataset to stream, described with ``datasets.load_dataset``'s arguments.

    Args:
        path: a builder name for local files (``"parquet"``, ``"json"``, ``"csv"``, ``"arrow"``,
            ``"webdataset"``), a ``save_to_disk`` folder, a single local file, or a hub id
            (opened with ``streaming=True``).
        name: dataset configuration name (hub datasets).
        data_files: file(s) or glob pattern(s), as in ``load_dataset``.
        data_dir: data directory, as in ``load_dataset``.
        split: split to read.
        streaming: force stream reading (front to back) even for a random-access format.
        num_shards: for ``save_to_disk`` / arrow sources, the number of contiguous pieces whose
            order is shuffled each epoch (default: pieces of 128 rows).
        columns: read only these columns.
        load_kwargs: extra keyword arguments for ``load_dataset`` (``revision``, ``token``...).

    Example:
        >>> Source(path="parquet", data_files="data/train-*.parquet")  # doctest: +ELLIPSIS
        Source(path='parquet', ...)
    """

    path: str
    name: Optional[str] = None
    data_files: Union[str, list[str], None] = None
    data_dir: Optional[str] = None
    split: str = "train"
    streaming: Optional[bool] = None
    num_shards: Optional[int] = None
    columns: Optional[list[str]] = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)


def as_source(spec: Union[Source, str, dict, Any]) -> Any:
    """Accept a :class:`Source`, a plain string (path, file or hub id) or a dict of its fields.

    A :class:`~lightning_stream.Mix` is returned as it is.
    """
    from .mixing import Mix

    if isinstance(spec, (Source, Mix)):
        return spec
    if isinstance(spec, dict):
        return Source(**spec)
    if isinstance(spec, str):
        ext = os.path.splitext(spec[:-3] if spec.endswith(".gz") else spec)[1]
        if ext in _EXT_BUILDERS and not os.path.isdir(spec):
            return Source(path=_EXT_BUILDERS[ext], data_files=spec)
        return Source(path=spec)
    raise TypeError(f"expected a Source, a string or a dict, got {type(spec).__name__}")


def _fingerprint(parts: list) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_files(source: Source) -> list[str]:
    patterns = source.data_files
    if patterns is None:
        raise ValueError(f"Source(path={source.path!r}) needs data_files")
    if isinstance(patterns, str):
        patterns = [patterns]
    base = source.data_dir or "."
    files: list[str] = []
    for pattern in patterns:
        try:
            found = datasets.data_files.resolve_pattern(pattern, base_path=base)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Source(path={source.path!r}): no file matches {pattern!r} (under {os.path.abspath(base)})") from err
        files.extend(sorted(found))
    return files


def _select(features: datasets.Features, columns: Optional[list[str]], where: str) -> datasets.Features:
    if columns is None:
        return features
    missing = [c for c in columns if c not in features]
    if missing:
        raise KeyError(f"{where}: column(s) {missing} not found; available: {list(features)}")
    return datasets.Features({c: features[c] for c in columns})


def gather(keys: np.ndarray, fetch: Callable[[int, np.ndarray], pa.Table]) -> pa.Table:
    """Rows fetched per key (``fetch(key, indices)``), put back in the order of ``keys``."""
    pieces, order = [], []
    for key in np.unique(keys):
        sel = np.nonzero(keys == key)[0]
        pieces.append(fetch(int(key), sel))
        order.append(sel)
    table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[np.concatenate(order)] = np.arange(len(keys))
    return table.take(pa.array(inverse))


class _RandomAccess:
    """Stores that know their block sizes up front and fetch rows by index."""

    random_access = True
    block_lengths: list[int]

    def epoch_order(self, *, seed: int, epoch: int, shuffle: bool, window: int) -> EpochOrder:
        return EpochOrder(self.block_lengths, seed=seed, epoch=epoch, shuffle=shuffle, window=window)


class ArrowStore(_RandomAccess):
    """Random access into memory-mapped arrow data (``save_to_disk`` folder or ``.arrow`` files)."""

    # A forked worker can keep using the parent's memory maps: no file handle or cache to unshare.
    fork_safe = True

    def __init__(self, source: Source) -> None:
        if os.path.isdir(source.path):
            ds = datasets.load_from_disk(source.path)
            if isinstance(ds, datasets.DatasetDict):
                if source.split not in ds:
                    raise KeyError(f"{source.path}: split {source.split!r} not found; available: {list(ds)}")
                ds = ds[source.split]
            files = [f["filename"] for f in ds.cache_files]
            parts = [datasets.Dataset.from_file(f) for f in files] if len(files) > 1 else [ds]
            self.where = source.path
        else:
            files = _resolve_files(source)
            parts = [datasets.Dataset.from_file(f) for f in files]
            ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            self.where = ",".join(files)
        self.features = _select(ds.features, source.columns, self.where)
        if ds._indices is not None:  # a save_to_disk of a select()/shuffle() result is flattened on save; be safe
            ds = ds.flatten_indices(keep_in_memory=True)
        self._table = ds.select_columns(list(self.features)).data  # memory-mapped datasets.Table
        self._arrays: Optional[NumpyColumns] = None
        self._rest: Any = None
        self.files = files
        self.file_rows = [p.num_rows for p in parts]
        self.num_rows = ds.num_rows
        if source.num_shards:
            per = -(-self.num_rows // source.num_shards)
        else:
            per = _ARROW_BLOCK_ROWS
        n_full, rest = divmod(self.num_rows, per)
        self.block_lengths = [per] * n_full + ([rest] if rest else [])
        self.fingerprint = _fingerprint([[os.path.basename(f), n] for f, n in zip(files, self.file_rows)])

    def take(self, rows: np.ndarray) -> pa.Table:
        # datasets' own gather over the memory-mapped record batches: ~20x faster than __getitem__.
        return self._table.fast_gather(rows)

    def take_arrays(self, rows: np.ndarray) -> tuple[Optional[pa.Table], dict[str, np.ndarray]]:
        """The rows as numpy arrays for the columns that have zero-copy views, arrow for the rest."""
        if self._arrays is None:
            plain = [name for name, feature in self.features.items() if not require_decoding(feature)]
            self._arrays = NumpyColumns(self._table.table, plain)
            rest = [name for name in self.features if name not in self._arrays.views]
            self._rest = self._table.select(rest) if rest else None
        arrays = self._arrays.gather(rows)
        return (self._rest.fast_gather(rows) if self._rest is not None else None), arrays

    def describe(self, row: int) -> str:
        for f, n in zip(self.files, self.file_rows):
            if row < n:
                return f"{f} row {row}"
            row -= n
        return f"{self.where} row {row}"


class ParquetStore(_RandomAccess):
    """Random access into local parquet files, one row group at a time.

    Row counts come from the footers. A batch reads the row groups that hold its rows; decoded
    row groups are kept in a small LRU cache sized to the shuffle window, so a window's rows are
    decoded about once per worker.
    """

    def __init__(self, source: Source, *, cache_rows: int = 20_000, files: Optional[list[str]] = None) -> None:
        self.files = files if files is not None else _resolve_files(source)
        self.columns = source.columns
        self._storage_options = {k: v for k, v in source.load_kwargs.items() if k == "token"}
        self._handles: dict[int, pq.ParquetFile] = {}
        self.block_lengths: list[int] = []
        self._block_file: list[int] = []
        self._block_rg: list[int] = []
        self.file_rows: list[int] = []
        schema = None
        for i, f in enumerate(self.files):
            meta = self._open(i).metadata
            if schema is None:
                schema = self._open(i).schema_arrow
            elif not self._open(i).schema_arrow.remove_metadata().equals(schema.remove_metadata()):
                raise ValueError(f"parquet file {f} has a different schema from {self.files[0]}")
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    self.block_lengths.append(n)
                    self._block_file.append(i)
                    self._block_rg.append(g)
            self.file_rows.append(meta.num_rows)
        self.num_rows = int(sum(self.block_lengths))
        self._block_end = np.cumsum(self.block_lengths, dtype=np.int64)
        self.features = _select(datasets.Features.from_arrow_schema(schema), source.columns, self.files[0])
        self.where = ",".join(self.files)
        self.fingerprint = _fingerprint([[os.path.basename(f), n] for f, n in zip(self.files, self.file_rows)])
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._cache_rows = cache_rows

    def _open(self, i: int) -> pq.ParquetFile:
        handle = self._handles.get(i)
        if handle is None:
            try:
                path = self.files[i]
                if "://" in path:  # hf://, s3://...: fsspec reads the footer and row groups by range
                    import fsspec

                    handle = pq.ParquetFile(fsspec.open(path, "rb", **self._storage_options).open())
                else:
                    handle = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(f"cannot read parquet file {self.files[i]}: {err}") from err
            self._handles[i] = handle
        return handle

    def __getstate__(self) -> dict:
        # File handles and decoded row groups stay in the process that opened them.
        return {**self.__dict__, "_handles": {}, "_cache": OrderedDict()}

    def _block(self, b: int) -> pa.Table:
        table = self._cache.get(b)
        if table is not None:
            self._cache.move_to_end(b)
            return table
        f, g = self._block_file[b], self._block_rg[b]
        try:
            table = self._open(f).read_row_group(g, columns=self.columns)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"cannot read row group {g} of parquet file {self.files[f]}: {err}") from err
        self._cache[b] = table
        cached = sum(t.num_rows for t in self._cache.values())
        while len(self._cache) > 1 and cached > self._cache_rows:
            _, old = self._cache.popitem(last=False)
            cached -= old.num_rows
        return table

    def take(self, rows: np.ndarray) -> pa.Table:
        blocks = np.searchsorted(self._block_end, rows, side="right")
        local = rows - (self._block_end[blocks] - np.asarray(self.block_lengths, dtype=np.int64)[blocks])
        return gather(blocks, lambda b, sel: self._block(b).take(pa.array(local[sel])))

    def describe(self, row: int) -> str:
        b = int(np.searchsorted(self._block_end, row, side="right"))
        f = self._block_file[b]
        before = sum(self.file_rows[:f])
        return f"{self.files[f]} row {row - before}"


def _builder(source: Source) -> Optional[str]:
    if os.path.isdir(source.path) and (
        os.path.exists(os.path.join(source.path, "state.json")) or os.path.exists(os.path.join(source.path, "dataset_dict.json"))
    ):
        return "save_to_disk"
    return source.path if source.path in {"parquet", "arrow"} else None


def _parquet_repo_files(source: Source) -> Optional[list[str]]:
    """The parquet files of a hub id or local repo, when ``datasets`` resolves it to parquet."""
    kwargs = {k: v for k, v in source.load_kwargs.items() if k in ("revision", "token")}
    try:
        builder = datasets.load_dataset_builder(source.path, source.name, data_dir=source.data_dir, data_files=source.data_files, **kwargs)
    except Exception as err:  # noqa: BLE001 - anything else is read as a stream, which reports its own errors
        log.debug("no parquet layout for %s: %s", source.path, err)
        return None
    files = (builder.config.data_files or {}).get(source.split)
    if builder.name != "parquet" or not files:
        return None
    return [str(f) for f in files]


def open_store(source: Any, *, cache_rows: int = 20_000):
    """Open the store that reads ``source``: random access where the format allows it."""
    from .mixing import Mix, MixtureStore

    if isinstance(source, Mix):
        return MixtureStore(source, cache_rows=cache_rows)
    kind = _builder(source)
    if not source.streaming:
        if kind in ("save_to_disk", "arrow"):
            return ArrowStore(source)
        if kind == "parquet":
            return ParquetStore(source, cache_rows=cache_rows)
        if kind is None and source.path not in _STREAM_BUILDERS:
            files = _parquet_repo_files(source)
            if files is not None:  # a hub or local parquet repo: random access by row group
                return ParquetStore(source, cache_rows=cache_rows, files=files)
    from .streams import StreamStore

    return StreamStore(source)
