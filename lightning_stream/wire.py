"""How a batch crosses from a DataLoader worker to the main process: its header and its bytes.

Each batch goes out as ``(BatchHeader, batch)``: the header is how the main process knows
exactly which step it is handing to training, and how many rows the step read, kept and
skipped. The loader strips it.

torch sends each tensor through a shared-memory segment of its own, whose file descriptor the
main process then asks for from the worker's resource-sharer thread. That thread needs the
worker's GIL, which the worker holds while it transforms the next batch, so the main process can
wait a thread switch interval (5 ms) per tensor: with batches that take ~10 ms to make, two
workers on two cores delivered ~1.2x one process instead of ~1.8x. Tensors of up to
``BY_VALUE_BYTES`` therefore travel by value in the pickled message itself; larger ones keep
torch's shared memory, where copying them through the pipe would cost more than the wait
(measured on 2 cores: 0.8 MB batches are faster by value, 2.4 MB ones through shared memory).
"""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["BY_VALUE_BYTES", "BatchHeader", "ByValue", "outgoing"]

BY_VALUE_BYTES = 1 << 20


@dataclass
class BatchHeader:
    """What the main process learns about a batch besides its data."""

    step: int
    rows_read: int
    rows_out: int
    skipped: list[str] = field(default_factory=list)
    # A stream lane's batch: (lane, k, row), the lane's shard its window begins in (a resume reads from there).
    anchor: tuple[int, int, int] | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (``telemetry.py``)
    sent: float = 0.0  # wall clock when a worker sent it (0: made in the main process)


def outgoing(header: BatchHeader, batch: Any) -> Any:
    """What a worker yields for a step: wrapped for the pipe in a worker, as it is in the main process."""
    from torch.utils.data import get_worker_info

    item = (header, batch)
    if get_worker_info() is None:
        return item
    header.sent = time.time()
    return ByValue(item)


# numpy has no bfloat16 (nor float8): such tensors travel as same-width integers.
_SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _tensor(array: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor if dtype is None else tensor.view(dtype)


class _Pickler(pickle.Pickler):
    def __init__(self, file: Any, shared: list[torch.Tensor]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared = shared

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.numel() * obj.element_size() > BY_VALUE_BYTES:
            self.shared.append(obj)  # pickled by the queue's own pickler: torch's shared memory
            return len(self.shared) - 1
        return None

    def reducer_override(self, obj: Any) -> Any:
        if (
            type(obj) is not torch.Tensor
            or obj.device.type != "cpu"
            or obj.layout != torch.strided
            or obj.requires_grad
        ):
            return NotImplemented
        try:
            return _tensor, (obj.numpy(), None)
        except TypeError:
            width = _SAME_WIDTH.get(obj.element_size())
            if width is None:
                return NotImplemented
            return _tensor, (obj.view(width).numpy(), obj.dtype)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, shared: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.shared = shared

    def persistent_load(self, pid: Any) -> Any:
        return self.shared[pid]


def _load(payload: bytes, shared: list[torch.Tensor]) -> Any:
    return _Unpickler(io.BytesIO(payload), shared).load()


class ByValue:
    """Wraps what a worker yields so that unpickling it returns the wrapped object, its small
    tensors copied by value rather than shared (see the module docstring)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple:
        buf: io.BytesIO = io.BytesIO()
        shared: list[torch.Tensor] = []
        _Pickler(buf, shared).dump(self.obj)
        return _load, (buf.getvalue(), shared)
