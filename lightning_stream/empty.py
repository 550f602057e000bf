"""A training step whose rows were all removed: still a step, on every rank.

A filter (or a batched map that returns fewer rows) can empty a whole batch. Skipping it would
make ``len(loader)`` a lie and, under DDP, give ranks different step counts: Lightning then waits
in a collective forever. So the loader yields an :class:`EmptyBatch` for such a step, and the
module decides what the step does; :func:`empty_step_loss` is the answer that fits every setup:

- one process: ``None``, which Lightning's automatic optimization takes as "skip this step";
- several ranks: a zero loss that reaches every trainable parameter, so the gradient all-reduce
  (DDP, FSDP) runs with a zero contribution from this rank while the others contribute theirs.
  (When every rank's step is empty at once, the optimizer steps on zero gradients: weight decay
  and momentum still move; a filter that empties whole batches on all ranks at once is rare.)

Evaluation loaders skip emptied batches instead: an evaluation step has no collective to meet.
"""

from __future__ import annotations

from typing import Any

import torch

from ._compat import attached_trainer

__all__ = ["EmptyBatch", "empty_step_loss"]


class EmptyBatch:
    """The batch of a training step whose rows a filter or transform removed entirely.

    Falsy and of length 0; indexing it raises a ``KeyError`` that says how to handle it.

    Example:
        >>> batch = EmptyBatch(step=3)
        >>> bool(batch), len(batch)
        (False, 0)
    """

    __slots__ = ("step",)

    def __init__(self, step: int = -1) -> None:
        self.step = step

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(
            f"{key!r}: this training step's rows were all removed by the filter or transform (an EmptyBatch, "
            "yielded so that every rank takes the same steps); begin training_step with "
            "`if isinstance(batch, lightning_stream.EmptyBatch): return lightning_stream.empty_step_loss(self)`"
        )

    def __repr__(self) -> str:
        return f"EmptyBatch(step={self.step})"


def empty_step_loss(module: Any) -> torch.Tensor | None:
    """What ``training_step`` returns for an :class:`EmptyBatch` (see the module docstring).

    ``None`` on one process; on several ranks a zero loss connected to every trainable parameter.
    """
    trainer = attached_trainer(module)
    if trainer is None or trainer.world_size == 1:
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    return torch.stack([p.sum() for p in params]).sum() * 0.0
