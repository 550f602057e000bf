"""Helpers shared by the store kinds: fingerprints, column selection, gathers by key, block orders.

They live apart from ``stores/__init__`` (the contract and the factory, which imports every
kind) so that a kind can use them without importing the factory back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..order import EpochOrder

__all__ = ["BlockStore", "file_digest", "files_fingerprint", "footer_digest", "fingerprint", "gather", "select_columns"]


def fingerprint(parts: list) -> str:
    """A short stable hash of JSON-serialisable ``parts``: what a checkpoint checks the rows against."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def files_fingerprint(files: Sequence[str], file_rows: Sequence[int], contents: Sequence[str]) -> str:
    """Fingerprint of rows read from files: base names (the data may move), row counts, and a digest
    of each file's content (``contents``): a shard rewritten under the same name with as many rows
    must not resume as if it were the same one."""
    return fingerprint([[os.path.basename(f), n, c] for f, n, c in zip(files, file_rows, contents)])


# Blocks hashed by :func:`file_digest`: at the head, the middle and the tail of the file.
_DIGEST_BLOCK = 16 << 10


def file_digest(path: str) -> str:
    """A cheap digest of a local file's content: its size and a hash of three 16 KiB blocks (head,
    middle, tail), for formats whose metadata says nothing of the content (arrow streams, json, tar).

    Not a modification time: a copy of the same bytes (to a node's local disk, say) keeps the
    digest, so a run resumes there. A rewrite changes the size or the tail, where the last rows
    are, in practice; one that changes only bytes between the blocks goes unnoticed: the price of
    reading 48 KiB per file rather than all of it.
    """
    size = os.path.getsize(path)
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        for start in dict.fromkeys((0, max(0, size // 2 - _DIGEST_BLOCK // 2), max(0, size - _DIGEST_BLOCK))):
            f.seek(start)
            h.update(f.read(_DIGEST_BLOCK))
    return h.hexdigest()[:16]


def footer_digest(meta: pq.FileMetaData) -> str:
    """A hash of a parquet file's footer as pyarrow writes it back: row counts, sizes and offsets of
    every row group and column chunk, column statistics, key-value metadata. It comes with the file
    (no extra read, remote files too), is the same for a copy of the same bytes anywhere, and a
    rewrite with other values changes sizes or statistics. A pyarrow that writes footers back
    otherwise would change it too: a resume across such an upgrade is refused (``strict=False``
    overrides)."""
    sink = pa.BufferOutputStream()
    meta.write_metadata_file(sink)
    return hashlib.sha1(sink.getvalue()).hexdigest()[:16]


def select_columns(features: datasets.Features, columns: list[str] | None, where: str) -> datasets.Features:
    """``features`` restricted to ``columns`` (all when None); a missing column names ``where``."""
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


class BlockStore:
    """Base of the random-access stores whose epoch order shuffles their blocks (``order.py``).

    It gives the optional members of ``RandomAccessStore`` their defaults: no chain, no
    read-ahead, and ``take_arrays`` as ``take``.
    """

    block_lengths: list[int]
    """Rows of each contiguous block, in source order (row groups, or slices of arrow files)."""
    chain = None
    reads_ahead = False
    read_ahead_rows = 0

    def take(self, rows: np.ndarray) -> pa.Table:
        raise NotImplementedError

    def take_arrays(self, rows: np.ndarray) -> tuple[pa.Table | None, dict[str, np.ndarray]]:
        return self.take(rows), {}

    def read_ahead(self, rows: list[np.ndarray]) -> None:
        """No read-ahead: rows are read when taken."""

    def epoch_order(
        self, *, seed: int, epoch: int, shuffle: bool, window: int, lanes: int = 1, batch_size: int = 1
    ) -> EpochOrder:
        """The order of ``epoch``: blocks shuffled, cut into ``lanes``, rows shuffled in windows of each lane."""
        return EpochOrder(
            self.block_lengths,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            window=window,
            lanes=lanes,
            batch_size=batch_size,
        )
