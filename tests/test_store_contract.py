"""Every kind of store keeps the whole contract of ``stores/__init__.py``: callers ask, never probe."""

from __future__ import annotations

import inspect
import os

import datasets
import numpy as np
import pytest

from lightning_stream import Mix, Source
from lightning_stream.spec import as_source
from lightning_stream.stores import RandomAccessStore, SequentialStore, Store, open_store
from lightning_stream.stores.objects import ChainStore, SliceStore


def _members(protocol: type) -> set[str]:
    names = set()
    for klass in protocol.__mro__:
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= set(getattr(klass, "__annotations__", {}))
    return names


def _stores(data_dir: str, jsonl_dir: str) -> dict[str, object]:
    parquet = Source(path="parquet", data_files=os.path.join(data_dir, "pq", "train-*.parquet"))
    mapped = datasets.load_dataset("parquet", data_files=os.path.join(data_dir, "one.parquet"), split="train")
    iterable = mapped.to_iterable_dataset().map(lambda row: {"n": row["id"] + 1})
    return {
        "arrow": open_store(Source(path=os.path.join(data_dir, "disk"))),
        "parquet": open_store(parquet),
        "mixture": open_store(Mix([parquet, Source(path=os.path.join(data_dir, "disk"))])),
        "slice": open_store(
            Source(path="parquet", data_files=os.path.join(data_dir, "one.parquet"), split="train[:50%]")
        ),
        "chain": open_store(as_source(iterable)),
        "stream": open_store(Source(path="json", data_files=os.path.join(jsonl_dir, "*.jsonl.gz"))),
    }


def test_every_store_kind_has_every_member_of_its_protocol(data_dir, jsonl_dir) -> None:
    for kind, store in _stores(data_dir, jsonl_dir).items():
        protocol = RandomAccessStore if store.random_access else SequentialStore
        missing = sorted(n for n in _members(protocol) | _members(Store) if not hasattr(store, n))
        assert not missing, f"{kind} ({type(store).__name__}) lacks {missing}"
    stores = _stores(data_dir, jsonl_dir)
    assert isinstance(stores["chain"], ChainStore) and isinstance(stores["slice"], SliceStore)


def test_wrapper_stores_forward_by_name_and_take_as_their_base(data_dir, jsonl_dir) -> None:
    stores = _stores(data_dir, jsonl_dir)
    chain, sliced = stores["chain"], stores["slice"]
    assert chain.chain is not None and chain.reads_ahead is False
    table, arrays = chain.take_arrays(np.array([3, 1]))
    assert arrays == {} and table.column("id").to_pylist() == [3, 1]
    table, arrays = sliced.take_arrays(np.array([0, 2]))
    assert table.column("id").to_pylist() == [0, 2] and sliced.num_rows == 500
    sliced.read_ahead([np.array([0])])  # no read-ahead: a call, not a probe
    assert "getattr" not in inspect.getsource(type(chain)) + inspect.getsource(type(sliced))


def test_sequential_store_is_told_the_epoch(data_dir, jsonl_dir) -> None:
    stream = _stores(data_dir, jsonl_dir)["stream"]
    assert stream.chain is None
    stream.set_epoch(3)  # part of the contract: a plain stream ignores it


@pytest.mark.parametrize("kind", ["arrow", "parquet", "mixture"])
def test_take_arrays_returns_the_rows_of_take(data_dir, jsonl_dir, kind) -> None:
    store = _stores(data_dir, jsonl_dir)[kind]
    rows = np.array([5, 0, 7])
    table, arrays = store.take_arrays(rows)
    got = arrays["id"].tolist() if "id" in arrays else table.column("id").to_pylist()
    assert got == store.take(rows).column("id").to_pylist()
