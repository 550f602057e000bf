"""Where the epoch of a stream dealt to lanes ends: the same step on every rank.

A stream's shards are dealt to lanes (``order.shard_lanes``) before their lengths are known, so
lanes end at different batches. One process skips the batches of lanes that have run out. Ranks
must take the same number of steps, so there a worker stops at its first such batch, and before
each step every rank says whether it has its batch: one ``all_reduce(MIN)`` of one integer, on
CPU (the default group if it is gloo, else a gloo group made once). The epoch ends at the first
step some rank lacks; the batches the other ranks had read for it are counted as dropped.

The same collective carries each lane's resume anchor (``StreamWindows.anchor``), so the
checkpoint rank 0 writes says where every rank's lanes resume reading.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from .wire import BatchHeader

log = logging.getLogger(__name__)

__all__ = ["EpochEnd"]


class EpochEnd:
    """Per epoch: the next local step expected, and the rows read but left untrained at the end."""

    def __init__(self, where: str, rank: int) -> None:
        self.where, self.rank = where, rank
        self.next_step = 0
        self.dropped_rows = 0
        self.peer_anchors: list[list[int]] | None = None
        self._group: Any = None

    def reset(self) -> None:
        self.next_step = 0
        self.dropped_rows = 0
        self.peer_anchors = None

    def reached(self, header: BatchHeader | None, anchors: list[list[int]] | None = None) -> bool:
        """True when the epoch ends instead of taking the step of ``header`` (None: no batch left).

        ``anchors`` (``[k, row]`` per lane, this rank's) are merged with the other ranks' into
        :attr:`peer_anchors`.
        """
        ok = header is not None and header.step == self.next_step
        self.next_step += 1
        if dist.is_available() and dist.is_initialized():
            mine = [x for a in (anchors or []) for x in a]
            # One MAX over [-ok, anchors...]: -max(-ok) is the MIN of ok; anchors only grow.
            values = torch.tensor([-int(ok), *mine], dtype=torch.int64)
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self._cpu_group())
            ok = values[0].item() == -1
            merged = values[1:].tolist()
            self.peer_anchors = [merged[i : i + 2] for i in range(0, len(merged), 2)] if anchors else None
        if ok:
            return False
        if header is not None:
            self.dropped_rows += header.rows_read
        if self.rank == 0:
            log.warning(
                "%s: the epoch ends at step %d, where the first lane of the stream ran out; the rows the longer lanes "
                "still had are not used in this epoch (data/rows_dropped counts those already read). Shards of similar "
                "sizes, as many as world_size x num_workers or a multiple, keep this small; lanes=1 uses every row.",
                self.where,
                self.next_step - 1,
            )
        return True

    def _cpu_group(self) -> Any:
        if self._group is None:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self._group
