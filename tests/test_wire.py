"""Batches cross from workers to the main process unchanged, small tensors by value."""

import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers torch's shared-memory reductions

from lightning_stream import wire
from lightning_stream.wire import ByValue


def roundtrip(obj):
    return pickle.loads(ForkingPickler.dumps(ByValue(obj)))


def test_small_tensors_travel_by_value_and_keep_dtype_and_values():
    batch = {
        "ids": torch.arange(12).reshape(3, 4),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "strided": torch.arange(20)[::3],
        "text": ["a", "b"],
        "nested": [{"x": torch.ones(2, dtype=torch.float16)}],
    }
    out = roundtrip(batch)
    for key in ("ids", "bf16", "mask", "strided"):
        assert out[key].dtype == batch[key].dtype
        assert torch.equal(out[key], batch[key])
        assert not out[key].is_shared()
    assert out["text"] == ["a", "b"]
    assert torch.equal(out["nested"][0]["x"], batch["nested"][0]["x"])
    out["ids"][0, 0] = 99  # a writable copy, not a view of the message
    assert batch["ids"][0, 0] == 0


def test_large_tensors_keep_torch_shared_memory(monkeypatch):
    monkeypatch.setattr(wire, "BY_VALUE_BYTES", 64)
    big, small = torch.arange(100, dtype=torch.float32), torch.arange(4)
    out = roundtrip({"big": big, "small": small})
    assert out["big"].is_shared() and torch.equal(out["big"], big)
    assert not out["small"].is_shared() and torch.equal(out["small"], small)


def test_tensors_that_need_grad_still_arrive():
    x = torch.ones(3, requires_grad=True)
    out = roundtrip({"x": x})
    assert out["x"].requires_grad and torch.equal(out["x"].detach(), x.detach())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_batches_equal_in_process_batches(tmp_path, num_workers):
    import datasets

    from lightning_stream import StreamingDataModule

    path = str(tmp_path / "ds")
    datasets.Dataset.from_dict({"id": list(range(40)), "ids": [[i] * 5 for i in range(40)]}).save_to_disk(path)
    # The same lanes on both sides, so the same order (by default the lanes follow the readers).
    ref = [b["ids"] for b in StreamingDataModule(train=path, batch_size=8, num_workers=0, lanes=2).train_dataloader()]
    got = [
        b["ids"]
        for b in StreamingDataModule(train=path, batch_size=8, num_workers=num_workers, lanes=2).train_dataloader()
    ]
    assert len(got) == 5 and all(torch.equal(a, b) for a, b in zip(ref, got))
