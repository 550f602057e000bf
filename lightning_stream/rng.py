"""Random numbers for transforms that resume exactly: one seed per batch, from where the batch is.

An augmentation (random crop, flip, token dropout) that draws from the global RNGs of a worker
gets other numbers after a resume, with another ``num_workers``, or after a worker restart: the
worker's RNG state depends on which batches that worker made before. So each batch's pipeline
runs with Python's ``random``, numpy's and torch's global RNGs seeded from ``(seed, epoch, key)``,
where ``key`` says where the batch is in the epoch (its first epoch position; for a stream dealt
to lanes, its lane and row), and restored afterwards. ``Map(fn, with_rng=True)`` passes the
batch's own ``numpy.random.Generator`` instead (``current_rng``), the cleaner way.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["batch_rng", "current_rng"]

_current: contextvars.ContextVar[np.random.Generator | None] = contextvars.ContextVar(
    "lightning_stream_rng", default=None
)


def _entropy(seed: int, epoch: int, key: tuple[int, ...]) -> list[int]:
    return [0x5EED, seed, epoch, *key]


@contextlib.contextmanager
def batch_rng(seed: int, epoch: int, key: tuple[int, ...]) -> Iterator[np.random.Generator]:
    """Seed the global RNGs (and :func:`current_rng`) for one batch; put them back afterwards."""
    sequence = np.random.SeedSequence(_entropy(seed, epoch, key))
    py_seed, np_seed, torch_seed = (int(x) for x in sequence.generate_state(3, dtype=np.uint64))
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(py_seed)
    np.random.seed(np_seed % (1 << 32))
    # The CPU generator only: torch.manual_seed would also reseed (and leave reseeded) the CUDA
    # generators of a num_workers=0 training process, and costs ~45% of a small batch's CPU.
    torch.default_generator.manual_seed(torch_seed % (1 << 63))
    token = _current.set(np.random.default_rng(sequence))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


def current_rng() -> np.random.Generator:
    """The generator of the batch being transformed (a fresh, unseeded one outside a loader)."""
    rng = _current.get()
    return rng if rng is not None else np.random.default_rng()
