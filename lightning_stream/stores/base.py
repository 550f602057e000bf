"""Helpers shared by the store kinds: fingerprints, column selection, gathers by key, block orders.

They live apart from ``stores/__init__`` (the contract and the factory, which imports every
kind) so that a kind can use them without importing the factory back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import pyarrow as pa

import datasets

from ..order import EpochOrder

__all__ = ["BlockStore", "files_fingerprint", "fingerprint", "gather", "select_columns"]


def fingerprint(parts: list) -> str:
    """A short stable hash of JSON-serialisable ``parts``: what a checkpoint checks the rows against."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def files_fingerprint(files: Sequence[str], file_rows: Sequence[int]) -> str:
    """Fingerprint of rows read from files: base names (the data may move) and row counts."""
    return fingerprint([[os.path.basename(f), n] for f, n in zip(files, file_rows)])


def select_columns(features: datasets.Features, columns: Optional[list[str]], where: str) -> datasets.Features:
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
    """Base of the random-access stores whose epoch order shuffles their blocks (``order.py``)."""

    block_lengths: list[int]

    def epoch_order(self, *, seed: int, epoch: int, shuffle: bool, window: int, lanes: int = 1, batch_size: int = 1) -> EpochOrder:
        """The order of ``epoch``: blocks shuffled, cut into ``lanes``, rows shuffled in windows of each lane."""
        return EpochOrder(self.block_lengths, seed=seed, epoch=epoch, shuffle=shuffle, window=window, lanes=lanes, batch_size=batch_size)
