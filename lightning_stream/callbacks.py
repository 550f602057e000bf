"""Trainer-side pieces: acknowledging trained batches and reporting what the data did.

The :class:`StreamingCallback` is installed by :class:`~lightning_stream.StreamingDataModule`
when the user has not added one. It pushes the epoch to the train loader (``set_epoch``), tells
it which batch reached ``training_step`` (so the checkpointed position ignores what Lightning
has prefetched), refuses a mid-epoch checkpoint that holds no loader position (a silent restart
of the epoch otherwise), and logs, once per epoch, how many rows the filters dropped, how many
bad rows were skipped and how many rows were dropped to keep the ranks' step counts even.

The loader's position travels in Lightning's own loop state (``loops.fit_loop.state_dict.
combined_loader``), so it is found whatever the datamodule's class is called.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ._compat import checkpoint_fit_loop
from .loader import StreamingDataLoader
from .state import StateMismatchError

log = logging.getLogger(__name__)

__all__ = ["StreamingCallback"]


def _train_loader(trainer: pl.Trainer) -> Any:
    loader = trainer.train_dataloader
    return loader if isinstance(loader, StreamingDataLoader) else None


def _loader_state_in(checkpoint: dict[str, Any]) -> tuple[dict | None, str | None]:
    """The loader state in ``checkpoint`` (None if absent), and where the checkpoint was written
    if it was mid-epoch without one (for the message)."""
    states, progress = checkpoint_fit_loop(checkpoint)
    found = next((s for s in states if isinstance(s, dict) and "position" in s and "version" in s), None)
    batches = progress.get("current", {}).get("processed", 0)
    if found is not None or not batches or progress.get("is_last_batch", False):
        return found, None
    return None, f"after batch {batches} of epoch {checkpoint.get('epoch', '?')}"


class StreamingCallback(pl.Callback):
    """Acknowledges trained batches and logs what the data did (``data/*`` metrics).

    Per step: ``data/wait_ms`` (time the step waited for its batch in the main process),
    ``data/wait_share`` (that wait over the whole step) and ``data/samples_per_sec``; where the
    batch's time went, ``data/read_ms``, ``data/decode_ms``, ``data/transform_ms``,
    ``data/collate_ms`` (in the worker) and ``data/transfer_ms`` (worker to main,
    ``telemetry.py``); under DDP, ``data/wait_ms_max`` and ``data/wait_ms_max_rank``, the largest
    wait over the ranks and whose it was (one ``all_gather`` of one number, on logging steps). It
    warns once when, after ``warmup_steps``, the loader makes the step wait more than
    ``warn_share`` of its time: the GPU is starved; the warning names the stage that costs most.
    Per epoch: rows filtered, bad rows skipped, rows dropped to keep ranks even.

    Example:
        >>> trainer = pl.Trainer(callbacks=[StreamingCallback(warn_share=0.2)])  # doctest: +SKIP
    """

    def __init__(self, warn_share: float = 0.3, warmup_steps: int = 20, log_throughput: bool = True) -> None:
        self.warn_share, self.warmup_steps, self.log_throughput = warn_share, warmup_steps, log_throughput
        self._last_start: float | None = None
        self._wait = self._total = 0.0
        self._steps = 0
        self._warned = False
        self._restored: dict | None = None
        self._stage_totals: dict[str, float] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        loader = _train_loader(trainer)
        if loader is None:
            return
        loader.ack()
        now = time.perf_counter()
        if self._last_start is not None and self.log_throughput:
            step = now - self._last_start
            # The wait of this batch belongs to the step that ends now.
            self._record(pl_module, loader.last_wait, step, loader.last_rows)
            self._record_stages(trainer, pl_module, loader, batch_idx)
        self._last_start = now

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_start = None  # the gap over validation and the epoch boundary is not a step
        loader = _train_loader(trainer)
        if loader is not None:
            loader.set_epoch(trainer.current_epoch)

    def take_restored_state(self) -> dict | None:
        """The loader state of the checkpoint being resumed, once (the datamodule loads it into the
        train loader it makes). Lightning restores its loop's loaders itself too, but only when the
        loader is made after the loops are restored: a ``configure_optimizers`` that reads
        ``trainer.estimated_stepping_batches`` makes it earlier, and the position would be lost."""
        state, self._restored = self._restored, None
        return state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._restored, where = _loader_state_in(checkpoint)
        if where is None:
            return
        message = (
            f"the checkpoint was written mid-epoch ({where}) but holds no lightning_stream loader position "
            "(loops.fit_loop.state_dict.combined_loader): resuming would restart the epoch, re-training its first "
            "batches and never reaching its last ones"
        )
        if getattr(trainer.datamodule, "strict_resume", True):
            raise StateMismatchError(
                message + ". Resume from an unedited checkpoint, or pass strict_resume=False to restart the epoch."
            )
        rank_zero_warn(message + "; restarting the epoch from its first batch (strict_resume=False)")

    def _record_stages(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, batch_idx: int) -> None:
        """``data/<stage>_ms`` of the batch just fetched; under DDP, the largest wait and its rank."""
        stages = loader.last_stages
        for name, seconds in stages.items():
            self._stage_totals[name] = self._stage_totals.get(name, 0.0) + seconds
        values = {f"data/{name}_ms": seconds * 1000 for name, seconds in stages.items()}
        if trainer.world_size > 1 and batch_idx % max(1, trainer.log_every_n_steps) == 0:
            # One small all_gather on the steps Lightning writes logs at: every rank makes it there.
            waits = trainer.strategy.all_gather(torch.tensor([loader.last_wait * 1000.0], device=pl_module.device))
            waits = waits.reshape(-1)
            values["data/wait_ms_max"] = float(waits.max())
            values["data/wait_ms_max_rank"] = float(waits.argmax())
        if values:
            pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=max(loader.last_rows, 1))

    def _dominant_stage(self) -> str:
        if not self._stage_totals:
            return ""
        name, seconds = max(self._stage_totals.items(), key=lambda kv: kv[1])
        return (
            f"; of the data time, the largest share goes to `{name}` ({seconds / self._steps * 1000:.1f} ms per batch)"
        )

    def _record(self, pl_module: pl.LightningModule, wait: float, step: float, rows: int) -> None:
        share = wait / step if step > 0 else 0.0
        pl_module.log_dict(
            {
                "data/wait_ms": wait * 1000,
                "data/wait_share": share,
                "data/samples_per_sec": rows / step if step > 0 else 0.0,
            },
            on_step=True,
            on_epoch=False,
            batch_size=max(rows, 1),
        )
        self._steps += 1
        if self._steps > self.warmup_steps:
            self._wait += wait
            self._total += step
            if not self._warned and self._steps >= 2 * self.warmup_steps and self._wait > self.warn_share * self._total:
                self._warned = True
                rank_zero_warn(
                    f"lightning_stream: training steps spend {self._wait / self._total:.0%} of their time waiting for data; "
                    "the accelerator is starved (try more num_workers, a cheaper transform or bigger batches)"
                    + self._dominant_stage()
                )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = _train_loader(trainer)
        if loader is None:
            return
        stats = loader.stats
        pl_module.log_dict(
            {"data/rows_filtered": float(stats.filtered), "data/rows_skipped": float(stats.skipped)},
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=trainer.world_size > 1,
        )
        # The same on every rank: logged as is, not summed.
        pl_module.log("data/rows_dropped", float(loader.epoch_dropped_rows), on_step=False, on_epoch=True)
        store = loader.dataset.store
        for name, rows in zip(getattr(store, "names", ()), getattr(store, "counts", ())):
            pl_module.log(f"data/mix_rows/{name}", float(rows), on_step=False, on_epoch=True)
        if stats.skipped:
            rank_zero_warn(
                f"lightning_stream skipped {stats.skipped} bad rows in epoch {trainer.current_epoch}; first: {stats.culprits}"
            )
