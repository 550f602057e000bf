"""Numeric arrow columns gathered as numpy: same rows as arrow, fewer copies, right dtypes."""

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

from lightning_stream import StreamingDataModule
from lightning_stream.stores.columns import NumpyColumns


def table(n=1000, batch=97):
    t = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "ids": pa.array([[i, i + 1, i + 2] for i in range(n)], pa.list_(pa.int32())),
            "score": pa.array([i / 2 for i in range(n)], pa.float32()),
            "ragged": pa.array([[0] * (i % 3) for i in range(n)], pa.list_(pa.int64())),
            "nullable": pa.array([None if i == 5 else i for i in range(n)], pa.int64()),
            "text": pa.array([str(i) for i in range(n)]),
        }
    )
    return pa.Table.from_batches(t.to_batches(max_chunksize=batch))


def test_only_columns_with_zero_copy_views_qualify():
    assert NumpyColumns(table(), ["id", "ids", "score", "ragged", "nullable", "text"]).names == ["id", "ids", "score"]


@pytest.mark.parametrize("rows", [np.arange(200, 232), np.array([999, 0, 500, 97, 96, 98, 3, 3])])
def test_gather_equals_arrow_take(rows):
    t = table()
    got = NumpyColumns(t, ["id", "ids", "score"]).gather(rows)
    want = t.take(pa.array(rows))
    assert got["id"].tolist() == want["id"].to_pylist()
    assert got["ids"].tolist() == want["ids"].to_pylist() and got["ids"].dtype == np.int32
    assert got["score"].tolist() == want["score"].to_pylist()
    got["ids"][0, 0] = -1  # fresh arrays, not views of the (read-only) arrow buffers
    assert t["ids"][int(rows[0])].as_py()[0] != -1


def test_numpy_and_python_formats_deliver_the_same_batches(tmp_path):
    path = str(tmp_path / "ds")
    n = 3000
    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "ids": datasets.Sequence(datasets.Value("int32")),
            "text": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_dict(
        {"id": list(range(n)), "ids": [[i % 50] * 8 for i in range(n)], "text": ["t"] * n}, features=features
    ).save_to_disk(path, num_shards=3)

    def run(fmt):
        dm = StreamingDataModule(
            train=path, batch_size=32, buffer_size=500, batch_format=fmt, transform=lambda b: {"labels": b["ids"]}
        )
        return list(dm.train_dataloader())

    python, numpy = run("python"), run("numpy")
    assert len(python) == len(numpy) == -(-n // 32)
    for a, b in zip(python, numpy):
        assert (
            torch.equal(a["id"], b["id"]) and torch.equal(a["ids"], b["ids"]) and torch.equal(a["labels"], b["labels"])
        )
        assert b["ids"].dtype == b["labels"].dtype == torch.int64  # int32 ids arrive as int64, as with_format("torch")
        assert a["text"] == b["text"]
    assert sorted(torch.cat([b["id"] for b in numpy]).tolist()) == list(range(n))


def test_bad_row_is_isolated_with_numpy_columns(tmp_path):
    path = str(tmp_path / "ds")
    datasets.Dataset.from_dict({"id": list(range(64)), "ids": [[i] * 4 for i in range(64)]}).save_to_disk(path)

    def transform(batch):
        if (batch["id"] == 13).any():
            raise ValueError("unlucky row")
        return {"double": batch["ids"] * 2}

    dm = StreamingDataModule(
        train=path, batch_size=16, shuffle=False, batch_format="numpy", transform=transform, on_error="skip"
    )
    batches = list(dm.train_dataloader())
    ids = torch.cat([b["id"] for b in batches]).tolist()
    assert ids == [i for i in range(64) if i != 13]
    assert torch.equal(batches[0]["double"], batches[0]["ids"] * 2)
