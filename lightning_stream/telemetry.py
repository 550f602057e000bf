"""Where a batch's time goes: per-stage clocks in the worker, the transfer in the main process.

A worker times each batch's stages (:data:`STAGES`): ``read`` (the store's bytes to arrow rows,
read-ahead included), ``decode`` (features such as images to Python or numpy values),
``transform`` (the user's pipeline) and ``collate``. The times travel in the batch's header
(``wire.BatchHeader``); the main process adds ``transfer``, the part of its wait after the worker
sent the batch (the pipe, unpickling). The callback logs each as ``data/<stage>_ms`` per step, so
a starved accelerator shows which stage starves it, not only that it waits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STAGES", "StageClock", "transfer_seconds"]

STAGES = ("read", "decode", "transform", "collate")


class StageClock:
    """Seconds spent in each stage since the last :meth:`take` (a worker's current batch)."""

    def __init__(self) -> None:
        self.times = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """This batch's times; the clock starts over for the next."""
        times, self.times = self.times, dict.fromkeys(STAGES, 0.0)
        return times


def transfer_seconds(sent: float, wait: float) -> float:
    """The part of the main process's ``wait`` after the worker sent the batch at ``sent``
    (wall clock: both processes share the host's). A batch that sat ready in the queue while
    the step trained cost no wait, whatever its age."""
    if not sent:
        return 0.0  # made in the main process (num_workers=0): nothing crossed a pipe
    return max(0.0, min(time.time() - sent, wait))
