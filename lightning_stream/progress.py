"""Where the current pass is: one record in the main process, one channel to the workers.

:class:`PassStart` is what every worker must know before it makes its first batch of a pass: the
epoch, the position the pass starts from, the lanes, and, for a stream dealt to lanes that
resumes mid-epoch, where each lane begins reading. The main process writes it into a
shared-memory tensor (:class:`PassChannel`) before each pass; workers read it when their pass
starts, so it reaches workers that persist across epochs too (a pickled attribute would not).

:class:`EpochProgress` is the main process's record of the pass: how many of its steps reached
``training_step`` (not merely fetched: Lightning prefetches one), the batches yielded and not yet
trained, and the stream lanes' resume anchors. The loader owns it; the checkpoint's
:class:`~lightning_stream.state.LoaderState` is computed from it and nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

__all__ = ["EpochProgress", "PassChannel", "PassStart"]

_HEAD = 4  # epoch, start, lanes, has anchors


@dataclass(frozen=True)
class PassStart:
    """The epoch, start position and lanes of a pass, and each lane's ``(k, row)`` resume anchor."""

    epoch: int = 0
    start: int = 0
    lanes: int = 1
    anchors: tuple[tuple[int, int], ...] | None = None


class PassChannel:
    """A :class:`PassStart` in shared memory: written by the main process, read by the workers.

    Its room for anchors is sized for ``lanes`` lanes; :meth:`write` of more lanes makes a new
    tensor (only before workers are started: the loader sizes it at construction and when a
    state is loaded, which precede the first pass).
    """

    def __init__(self, lanes: int = 1) -> None:
        self.tensor = torch.zeros(_HEAD + 2 * max(1, lanes), dtype=torch.int64).share_memory_()
        self.write(PassStart(lanes=max(1, lanes)))

    @property
    def capacity(self) -> int:
        return (self.tensor.numel() - _HEAD) // 2

    def fit(self, lanes: int) -> None:
        """Make room for ``lanes`` lanes' anchors (a new tensor: call before workers start)."""
        if lanes > self.capacity:
            self.tensor = torch.zeros(_HEAD + 2 * lanes, dtype=torch.int64).share_memory_()

    def write(self, start: PassStart) -> None:
        if start.anchors is not None and len(start.anchors) > self.capacity:
            raise ValueError(f"{len(start.anchors)} lane anchors do not fit a channel for {self.capacity} lanes")
        head = [start.epoch, start.start, start.lanes, int(start.anchors is not None)]
        values = head + [x for anchor in start.anchors or () for x in anchor]
        self.tensor[: len(values)] = torch.tensor(values, dtype=torch.int64)

    def read(self) -> PassStart:
        values = self.tensor.tolist()
        epoch, start, lanes, has_anchors = values[:_HEAD]
        anchors = None
        if has_anchors:
            flat = values[_HEAD : _HEAD + 2 * lanes]
            anchors = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        return PassStart(epoch, start, lanes, anchors)


@dataclass
class EpochProgress:
    """The main process's record of one pass: what it started from and what has been trained.

    ``steps`` counts the pass's local steps up to and including the last trained one;
    ``steps_before`` the steps of the epoch trained before this pass began (a resume).
    """

    epoch: int
    start: int = 0
    steps_before: int = 0
    steps: int = 0
    awaiting: deque = field(default_factory=deque)  # (step, anchor) of yielded, untrained batches
    anchors: list[list[int]] | None = None  # a stream's lanes: [k, row] where each resumes reading

    @property
    def resumed(self) -> bool:
        return bool(self.start or self.steps_before)

    @property
    def total_steps(self) -> int:
        """Steps of the epoch trained so far, this pass's and the ones before it."""
        return self.steps_before + self.steps

    def yielded(self, step: int, anchor: tuple[int, int, int] | None) -> None:
        self.awaiting.append((step, anchor))

    def ack(self) -> None:
        """The oldest yielded batch reached ``training_step``."""
        if self.awaiting:
            self.trained(*self.awaiting.popleft())

    def trained(self, step: int, anchor: tuple[int, int, int] | None) -> None:
        self.steps = step + 1
        if anchor is not None and self.anchors is not None:
            lane, k, row = anchor
            self.anchors[lane] = [max(self.anchors[lane][0], k), max(self.anchors[lane][1], row)]
