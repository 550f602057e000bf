"""Drivers the test files share: one epoch's ids or batches from a loader, and a quiet CPU Trainer.

Imported as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``, as for ``conftest``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def epoch_batches(loader_or_datamodule: Any, epoch: int | None = None) -> list:
    """Every batch of one epoch of a loader (or of a datamodule's ``train_dataloader()``).

    ``epoch``: passed to ``set_epoch`` first (default: the epoch the loader is at). The workers are
    stopped afterwards, also when the epoch raises: persistent workers left to the garbage
    collector cost torch's shutdown a 5 s join each, and an iterator finalized in a collection may
    wait for workers that never get its stop message.
    """
    loader = loader_or_datamodule
    if hasattr(loader, "train_dataloader"):
        loader = loader.train_dataloader()
    if epoch is not None:
        loader.set_epoch(epoch)
    try:
        return list(loader)
    finally:
        loader.shutdown_workers()


def epoch_ids(loader_or_datamodule: Any, epoch: int | None = None, *, per_batch: bool = False) -> list:
    """The ``id`` column of one epoch, in the order the loader gave it (see :func:`epoch_batches`).

    ``per_batch``: a list of each batch's ids instead of one flat list.
    """
    ids = [batch["id"].tolist() for batch in epoch_batches(loader_or_datamodule, epoch)]
    return ids if per_batch else [i for batch in ids for i in batch]


def cpu_trainer(**overrides: Any) -> pl.Trainer:
    """A Trainer on the CPU with no logger, checkpointing, progress bar or model summary; any
    keyword (``max_steps``, ``callbacks``, ``default_root_dir``, ``enable_checkpointing=True``
    for a ``ModelCheckpoint``, ...) is passed on and wins over these."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**kwargs, **overrides})
