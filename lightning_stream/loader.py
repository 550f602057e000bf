"""``StreamingDataLoader``: a torchdata ``StatefulDataLoader`` whose state is one position.

The loader's state (``state.LoaderState``) is computed in the main process, not collected from
the workers: the epoch and the number of global steps *trained* (not merely fetched). Under Lightning the
:class:`~lightning_stream.callbacks.StreamingCallback` acknowledges each batch as it reaches
``training_step``, so the batch Lightning has prefetched is not counted; used on its own, a batch
counts as consumed when it is yielded (torchdata's convention). From the step count, the epoch
position follows by arithmetic (``split.Layout.position_after``), which makes the checkpoint a
handful of integers and lets a resume start on exactly the next batch.

The loader owns its epoch: it starts at 0, moves to the next epoch when one is exhausted, is
set by ``set_epoch`` (the callback pushes ``trainer.current_epoch`` at each epoch start) and by
``load_state_dict``; it never reads the trainer. Iteration starts lazily, at the first
``next()``, so a ``set_epoch`` or a restore that comes after ``iter()`` still applies.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from .blocks import BlockLayout
from .budget import BudgetLayout
from .dataset import StreamingDataset
from .epoch_end import EpochEnd
from .progress import EpochProgress, PassStart
from .split import Layout
from .state import STATE_VERSION, LoaderState, check_state
from .tally import EpochTally
from .telemetry import transfer_seconds
from .wire import BatchHeader
from .workers import die_with_parent, shutdown_workers, worker_death

log = logging.getLogger(__name__)

__all__ = ["StreamingDataLoader"]


def _identity(x: Any) -> Any:
    return x


class StreamingDataLoader(StatefulDataLoader):
    """Loader over a :class:`~lightning_stream.dataset.StreamingDataset` with an exact, tiny state.

    ``state_dict()`` / ``load_state_dict()`` follow torchdata's API; the state is a versioned dict
    of plain types (:class:`~lightning_stream.state.LoaderState`). ``set_epoch(e)`` chooses the
    epoch of the next iteration; without it, each exhausted pass moves on to the next epoch.

    Example:
        >>> loader = StreamingDataLoader(dataset, num_workers=2)  # doctest: +SKIP
        >>> for batch in loader: ...  # doctest: +SKIP
        >>> state = loader.state_dict()  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        timeout: float = 0,
        multiprocessing_context: Any = None,
        max_skipped: float | None = None,
        lanes: int | None = None,
        strict_resume: bool = True,
        sampler: None = None,
        batch_sampler: None = None,
    ) -> None:
        # ``sampler``/``batch_sampler`` exist so that Lightning can rebuild the loader from its
        # __init__ arguments (it does for trainer.predict); the dataset makes its own batches.
        if sampler is not None or batch_sampler is not None:
            raise ValueError("StreamingDataLoader makes its own batches: it takes no sampler or batch_sampler")
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_identity,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            timeout=timeout,
            multiprocessing_context=multiprocessing_context,
            worker_init_fn=functools.partial(die_with_parent, os.getpid()),  # no worker outlives training
            snapshot_every_n_steps=0,  # the state lives in the main process: no worker snapshots
        )
        self.max_skipped = max_skipped
        self.strict_resume = strict_resume
        self.lanes = self._choose_lanes(lanes)
        self.epoch_end = EpochEnd(dataset.store.where, dataset.rank)
        self.acked_externally = False
        dataset.channel.fit(self.lanes)
        self._epoch = 0
        self._resume: LoaderState | None = None  # loaded, applied by the next iteration of its epoch
        self._loaded: LoaderState | None = None  # the state last loaded, as saved
        self._progress: EpochProgress | None = None  # the pass under way (None: none, or it finished)
        self._len_hint: int | None = None
        self.stats = EpochTally(dataset.store.where)  # the current pass's row counts
        self.last_wait = 0.0  # seconds the last next() spent waiting for its batch
        self.last_rows = 0
        self.last_stages: dict[str, float] = {}  # seconds per stage of the last batch (``telemetry.py``)

    def shutdown_workers(self) -> None:
        """Stop persistent workers now (they are restarted by the next iteration)."""
        shutdown_workers(getattr(self, "_iterator", None))
        self._iterator = None

    # -- lanes ----------------------------------------------------------------------------------------
    @property
    def readers(self) -> int:
        """Processes that read this loader's data on all ranks: ``world_size x num_workers``."""
        return self.dataset.world_size * max(1, self.num_workers)

    def _choose_lanes(self, lanes: int | None) -> int:
        ds = self.dataset
        if ds.options.evaluation:
            return 1  # evaluation reads contiguous runs
        if lanes is not None and lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        wanted = self.readers if lanes is None else lanes
        if not ds.store.random_access and ds.store.num_shards < wanted:
            return 1  # too few shards to deal: every reader reads the whole stream (the datamodule warns)
        if lanes is not None:
            self._warn_if_lanes_split(lanes, "lanes")
        return wanted

    @property
    def _stream_lanes(self) -> bool:
        """A stream whose shards are dealt to lanes (``dataset._stream_lanes``)."""
        return not self.dataset.store.random_access and self.lanes > 1

    @property
    def _ends_by_lane(self) -> bool:
        # One rank skips the holes of a stream's uneven lanes; several must agree where the epoch ends.
        return self._stream_lanes and self.dataset.world_size > 1

    def _warn_if_lanes_split(self, lanes: int, what: str) -> None:
        if lanes % self.readers:
            log.warning(
                "%s=%d is not a multiple of the %d readers (%d ranks x %d workers): the order stays exact, but some "
                "lanes are read by several readers, so blocks of %s are read more than once per epoch. Keep "
                "world_size x num_workers a divisor of %d to read each block once.",
                what,
                lanes,
                self.readers,
                self.dataset.world_size,
                max(1, self.num_workers),
                self.dataset.store.where,
                lanes,
            )

    # -- epoch and length -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order from the next iteration on."""
        self._epoch = int(epoch)

    def current_epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        if self._len_hint is not None:
            return self._len_hint
        layout = self.dataset.layout(0, epoch=self._epoch, lanes=self.lanes)
        if layout is None:
            raise TypeError(f"the length of {self.dataset.store.where} is unknown until it has been read (a stream)")
        return layout.num_steps

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> _LazyEpoch:  # type: ignore[override]
        return _LazyEpoch(self)

    def _begin(self) -> Any:
        epoch = self._epoch
        resume, self._resume = self._resume, None
        if resume is not None and resume.epoch != epoch:
            log.warning(
                "the loaded state of epoch %d is not used: this iteration is epoch %d (set_epoch)", resume.epoch, epoch
            )
            resume = None
        progress = EpochProgress(epoch)
        if resume is not None:
            progress.start, progress.steps_before = resume.position, resume.steps
        resumed_anchors = None
        if self._stream_lanes:
            resumed_anchors = resume.anchors if resume is not None else None
            progress.anchors = [list(a) for a in (resumed_anchors or [(0, 0)] * self.lanes)]
        self._progress = progress
        self.dataset.channel.write(PassStart(epoch, progress.start, self.lanes, resumed_anchors or None))
        try:
            length: int | None = len(self)
        except TypeError:  # a stream: its length is known once it has been read
            length = None
        ds = self.dataset
        self.stats = EpochTally(
            ds.store.where,
            epoch=epoch,
            resumed=progress.resumed,
            length=length,
            filters=ds.options.pipeline.filters,
            max_skipped=self.max_skipped,
            total_rows=ds.num_rows,
        )
        self.epoch_end.reset()
        return super().__iter__()

    def _on_batch(self, header: BatchHeader, yielded: bool) -> None:
        self.stats.add(header)
        if self.stats.length is not None and header.step + 1 >= self.stats.length:
            # The pass's last step: Lightning, knowing len(), may not ask for the end of the pass,
            # so an epoch of emptied steps is refused here, not trained through in silence.
            self.stats.finished()
        if yielded:
            self._progress.yielded(header.step, header.anchor)
            if not self.acked_externally:
                self.ack()
        elif not self._progress.awaiting:
            # An emptied batch (all rows filtered) right after acked ones is consumed too.
            self._progress.trained(header.step, header.anchor)

    def ack(self) -> None:
        """Mark the oldest yielded, unacknowledged batch as trained."""
        if self._progress is not None:
            self._progress.ack()

    def _finished(self) -> None:
        # The state now says "the next epoch, from its start" (what a resume must do).
        self._len_hint = None
        self._progress = None
        self._epoch += 1

    @property
    def epoch_dropped_rows(self) -> int:
        """Rows of the current epoch that no rank sees (to keep step counts even)."""
        p = self._progress
        layout = self.dataset.layout(p.start if p else 0, epoch=p.epoch if p else self._epoch, lanes=self.lanes)
        return layout.dropped_rows if layout is not None else self.epoch_end.dropped_rows

    # -- state ------------------------------------------------------------------------------------
    def _layout(self, start: int, epoch: int) -> Layout | BudgetLayout | BlockLayout:
        # The layout the workers use (``pad`` included).
        layout = self.dataset.layout(start, epoch=epoch, lanes=self.lanes)
        if isinstance(layout, (Layout, BudgetLayout, BlockLayout)):
            return layout
        # A stream (its end is not known here: positions count full steps) or an eval loader.
        o = self.dataset.options
        return Layout(self.dataset.num_rows or 1 << 62, start, o.batch_size, self.dataset.world_size, o.drop_last)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last trained batch, as plain data (:class:`LoaderState`)."""
        return self._state().to_dict()

    def _state(self) -> LoaderState:
        ds, o = self.dataset, self.dataset.options
        if self._progress is not None:
            p = self._progress
            where = dict(
                epoch=p.epoch, steps=p.total_steps, position=self._layout(p.start, p.epoch).position_after(p.steps)
            )
        elif self._resume is not None:
            where = dict(epoch=self._resume.epoch, steps=self._resume.steps, position=self._resume.position)
        else:
            where = dict(epoch=self._epoch, steps=0, position=0)
        anchors = self._state_anchors()
        return LoaderState(
            version=STATE_VERSION,
            **where,
            num_rows=ds.num_rows,
            fingerprint=ds.store.fingerprint,
            seed=o.seed,
            shuffle=o.shuffle,
            window=o.window,
            lanes=self.lanes,
            batch_size=o.batch_size,
            world_size=ds.world_size,
            batch_tokens=o.batch_tokens,
            max_images=o.max_images,
            block_size=o.block_size,
            anchors=tuple(tuple(a) for a in anchors) if anchors is not None else None,
        )

    def _state_anchors(self) -> list[list[int]] | None:
        """Where each lane of a stream resumes reading: the shard its current window begins in."""
        if self._progress is None:
            anchors = self._resume.anchors if self._resume is not None else None
            return [list(a) for a in anchors] if anchors is not None else None
        anchors = self._progress.anchors
        if anchors is None:
            return None
        peers = self.epoch_end.peer_anchors  # the other ranks' lanes, as of the last step
        if peers is None:
            return [list(a) for a in anchors]
        return [[max(a[0], b[0]), max(a[1], b[1])] for a, b in zip(anchors, peers)]

    def load_state_dict(self, state_dict: dict[str, Any], *, strict: bool | None = None) -> None:
        """Resume from ``state_dict`` at the next iteration of its epoch.

        ``strict`` defaults to the loader's ``strict_resume``: Lightning restores the loader from
        the checkpoint with no arguments, and must meet the user's choice.
        """
        if not state_dict:
            return
        saved = LoaderState.from_dict(state_dict)
        if saved == self._loaded and self._progress is None:
            return  # the same state again, not begun yet: Lightning's own restore after the datamodule's
        self._loaded = saved
        saved = check_state(saved, self._state(), strict=self.strict_resume if strict is None else strict)
        if saved.lanes != self.lanes and not self.dataset.options.evaluation:
            # The order keeps the lanes it started with, whatever the topology now.
            self._warn_if_lanes_split(saved.lanes, "the checkpoint's lanes")
            self.lanes = saved.lanes
            self.dataset.channel.fit(self.lanes)
        self._progress = None
        self._len_hint = None
        whole = self.dataset.layout(0, epoch=saved.epoch, lanes=self.lanes)  # positions count what the layout's do
        num_rows = whole.num_rows if whole is not None else None
        if num_rows is not None and saved.position >= num_rows and saved.steps:
            # Written after the epoch's last step: what follows is the next epoch, from its start.
            self._resume, self._epoch = None, saved.epoch + 1
            return
        self._resume, self._epoch = saved, saved.epoch
        layout = self.dataset.layout(saved.position, epoch=saved.epoch, lanes=self.lanes)
        if layout is not None:
            # Resumed on another world size, the resumed epoch can hold more steps than a fresh one;
            # Lightning sizes its loop from len() once, so len() must not undercount that epoch.
            self._len_hint = None
            self._len_hint = max(len(self), saved.steps + layout.num_steps)


class _LazyEpoch:
    """One pass over the loader; starts the workers at the first ``next()``."""

    def __init__(self, loader: StreamingDataLoader) -> None:
        self.loader = loader
        self._it: Any = None
        self._header: BatchHeader | None = None

    def __iter__(self) -> _LazyEpoch:
        return self

    def __next__(self) -> Any:
        loader = self.loader
        t0 = time.perf_counter()
        if self._it is None:
            self._it = iter(loader._begin())
        while True:
            try:
                batch = self._step(loader)
            except (RuntimeError, ConnectionError, EOFError) as err:
                # A worker's own exception arrives as itself; only a worker that died is reworded.
                # torch's SIGCHLD handler raises a dead worker's error wherever the main thread is:
                # in the bookkeeping after a batch too, not only while waiting for one.
                death = worker_death(err, self._it, loader.num_workers, loader.dataset.store.where)
                if death is None:
                    raise
                raise RuntimeError(death) from err
            if batch is not None:
                loader.last_wait = time.perf_counter() - t0
                stages = dict(self._header.stages)
                stages["transfer"] = transfer_seconds(self._header.sent, loader.last_wait)
                loader.last_stages = stages
                return batch

    def _step(self, loader: StreamingDataLoader) -> Any:
        """The next step's batch, or None for a step without one (a lane's hole, a skipped batch)."""
        try:
            header, batch = next(self._it)
        except StopIteration:
            self._end(loader, None)
            raise
        if self._end(loader, header):
            raise StopIteration
        loader._on_batch(header, batch is not None)
        self._header = header
        if batch is not None:
            loader.last_rows = header.rows_out
        return batch

    @staticmethod
    def _end(loader: StreamingDataLoader, header: BatchHeader | None) -> bool:
        """True when the pass ends here (``header`` None: the workers have no batch left)."""
        ended = header is None
        if loader._ends_by_lane:
            ended = loader.epoch_end.reached(header, loader._progress.anchors) or ended
        if ended:
            tally = loader.stats
            loader._finished()
            tally.finished()
        return ended

    def __len__(self) -> int:
        return len(self.loader)
