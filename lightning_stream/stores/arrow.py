"""Random access into memory-mapped arrow data: a ``save_to_disk`` folder or ``.arrow`` files."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from .._compat import arrow_table, gather_rows, needs_decoding, select_table_columns
from ..spec import Source
from .base import BlockStore, file_digest, files_fingerprint, select_columns
from .columns import NumpyColumns
from .culprits import check_whole, schema_difference
from .resolve import resolve_files

__all__ = ["ArrowStore"]

# Rows per block when a random-access source has no natural blocks (arrow): the unit whose order
# is shuffled each epoch before rows are shuffled inside a window.
_ARROW_BLOCK_ROWS = 128


class ArrowStore(BlockStore):
    """Random access into memory-mapped arrow data (``save_to_disk`` folder or ``.arrow`` files).

    Besides ``take`` it has the optional fast path ``take_arrays``: numeric columns gathered as
    numpy from zero-copy views of the memory map (``columns.py``).
    """

    random_access = True
    # A forked worker can keep using the parent's memory maps: no file handle or cache to unshare.
    fork_safe = True
    # A spawned worker maps the files again rather than unpickling the tables (a store opened from a
    # Source travels as that source, its files listed: ``__getstate__``).
    portable = False

    def __init__(self, source: Source) -> None:
        if os.path.isdir(source.path):
            _check_listed(source.path)
            ds = _named_read(source.path, lambda: datasets.load_from_disk(source.path))
            if isinstance(ds, datasets.DatasetDict):
                if source.split not in ds:
                    raise KeyError(f"{source.path}: split {source.split!r} not found; available: {list(ds)}")
                ds = ds[source.split]
            files = [f["filename"] for f in ds.cache_files]
            for f in files:  # datasets reads a file cut at a record batch boundary short, silently
                check_whole(f)
            parts = [datasets.Dataset.from_file(f) for f in files] if len(files) > 1 else [ds]
            where = source.path
            pinned = source
        else:
            files = resolve_files(source)
            for f in files:
                check_whole(f)
            parts = [_named_read(f, lambda f=f: datasets.Dataset.from_file(f)) for f in files]
            for f, part in zip(files[1:], parts[1:]):
                if not part.data.schema.remove_metadata().equals(parts[0].data.schema.remove_metadata()):
                    difference = schema_difference(parts[0].data.schema, part.data.schema, files[0], f)
                    raise ValueError(f"arrow file {f} has a different schema from {files[0]}: {difference}")
            ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            where = ",".join(files)
            pinned = dataclasses.replace(source, data_files=files, data_dir=None)
        self._open(ds, where, files, [p.num_rows for p in parts], source.columns, source.num_shards)
        if not self.num_rows:  # named here: later it is only an epoch of 0 steps
            raise ValueError(f"{where}: 0 rows, nothing to read")
        self.fingerprint = files_fingerprint(files, self.file_rows, [file_digest(f) for f in files])
        self._source, self.portable = pinned, True

    def __getstate__(self) -> dict:
        # Opened from a Source: the source, its files listed, so that another process maps the same
        # files (a glob there could match more). Over a Dataset object: the store itself.
        source = self.__dict__.get("_source")
        return {"_source": source} if source is not None else self.__dict__

    def __setstate__(self, state: dict) -> None:
        if set(state) == {"_source"}:
            self.__init__(state["_source"])
        else:
            self.__dict__.update(state)

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, where: str, indices: np.ndarray | None, fingerprint: str) -> ArrowStore:
        """A store over a ``Dataset`` object the user holds; ``indices`` is its indices mapping
        (``stores/objects.py`` reads it), through which rows are looked up."""
        store = cls.__new__(cls)
        files = [f["filename"] for f in ds.cache_files]
        store._open(
            ds,
            where,
            files,
            [datasets.Dataset.from_file(f).num_rows for f in files] if len(files) > 1 else [len(ds.data)],
            None,
            None,
        )
        store._indices = indices
        if indices is not None:
            store.num_rows = len(indices)
            store.block_lengths = _blocks(store.num_rows, None)
        store.fingerprint = fingerprint
        return store

    def _open(
        self,
        ds: datasets.Dataset,
        where: str,
        files: list[str],
        file_rows: list[int],
        columns: list[str] | None,
        num_shards: int | None,
    ) -> None:
        self.where = where
        self.features = select_columns(ds.features, columns, self.where)
        self._table = ds.select_columns(list(self.features)).data  # memory-mapped datasets.Table (no indices)
        self._arrays: NumpyColumns | None = None
        self._rest: Any = None
        self._indices: np.ndarray | None = None
        self.files = files
        self.file_rows = file_rows
        self.num_rows = len(ds.data)
        self.block_lengths = _blocks(self.num_rows, num_shards)

    def take(self, rows: np.ndarray) -> pa.Table:
        if self._indices is not None:
            rows = self._indices[rows]
        return gather_rows(self._table, rows)

    def take_arrays(self, rows: np.ndarray) -> tuple[pa.Table | None, dict[str, np.ndarray]]:
        """The rows as numpy arrays for the columns that have zero-copy views, arrow for the rest."""
        if self._arrays is None:
            plain = [name for name, feature in self.features.items() if not needs_decoding(feature)]
            self._arrays = NumpyColumns(arrow_table(self._table), plain)
            rest = [name for name in self.features if name not in self._arrays.views]
            self._rest = select_table_columns(self._table, rest) if rest else None
        if self._indices is not None:
            rows = self._indices[rows]
        arrays = self._arrays.gather(rows)
        return (gather_rows(self._rest, rows) if self._rest is not None else None), arrays

    def describe(self, row: int) -> str:
        if self._indices is not None:
            row = int(self._indices[row])
        for f, n in zip(self.files, self.file_rows):
            if row < n:
                return f"{f} row {row}"
            row -= n
        return f"{self.where} row {row}"


def _named_read(path: str, read: Callable[[], Any]) -> Any:
    """``read()`` of arrow data at ``path`` (a file or a save_to_disk folder); a file cut inside a
    record batch fails there without its name ("Expected to be able to read N bytes"): named here."""
    try:
        return read()
    except (OSError, pa.ArrowInvalid) as err:
        candidates = (
            [path]
            if os.path.isfile(path)
            else sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.arrow"), recursive=True))
        )
        for f in candidates:
            check_whole(f)
        raise ValueError(f"cannot read arrow data {path}: {type(err).__name__}: {err}") from err


def _check_listed(folder: str) -> None:
    """A ``save_to_disk`` folder of a dataset with no row lists no data file: ``datasets`` then fails
    with an IndexError of its own. Named here."""
    try:
        with open(os.path.join(folder, "state.json")) as f:
            listed = json.load(f).get("_data_files")
    except (OSError, ValueError):
        return  # a DatasetDict folder, or no state: datasets says what it finds
    if listed == []:
        raise ValueError(
            f"{folder}: 0 rows, nothing to read (its state.json lists no data file: a dataset saved empty)"
        )


def _blocks(num_rows: int, num_shards: int | None) -> list[int]:
    """Block lengths: ``num_shards`` contiguous pieces, or pieces of ``_ARROW_BLOCK_ROWS``."""
    per = -(-num_rows // num_shards) if num_shards else _ARROW_BLOCK_ROWS
    n_full, rest = divmod(num_rows, per)
    return [per] * n_full + ([rest] if rest else [])
