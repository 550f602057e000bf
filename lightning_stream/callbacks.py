"""Trainer-side pieces: acknowledging trained batches and reporting what the data did.

The :class:`StreamingCallback` is installed by :class:`~lightning_stream.StreamingDataModule`
when the user has not added one. It tells the train loader which batch reached
``training_step`` (so the checkpointed position ignores what Lightning has prefetched) and logs,
once per epoch, how many rows the filters dropped, how many bad rows were skipped and how
many rows were dropped to keep the ranks' step counts even.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

log = logging.getLogger(__name__)

__all__ = ["StreamingCallback"]


def _train_loader(trainer: pl.Trainer) -> Any:
    dm = trainer.datamodule
    return getattr(dm, "train_loader", None)


class StreamingCallback(pl.Callback):
    """Acknowledges trained batches and logs per-epoch data counts (``data/*`` metrics).

    Example:
        >>> trainer = pl.Trainer(callbacks=[StreamingCallback()])  # doctest: +SKIP
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        loader = _train_loader(trainer)
        if loader is not None:
            loader.ack()

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
        if stats.skipped:
            rank_zero_warn(
                f"lightning_stream skipped {stats.skipped} bad rows in epoch {trainer.current_epoch}; first: {stats.culprits}"
            )
