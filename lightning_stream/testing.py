"""Check that a datamodule resumes exactly: the test users can run on their own data.

:func:`assert_resume_equivalent` trains once without a break (run A), then again with a crash
right after the checkpoint of step ``k`` (run B), and resumes run B from that ``.ckpt`` in a
fresh Trainer. The batches ``training_step`` receives after the resume must equal run A's from
step ``k`` on, in order, across the epoch boundaries that follow.

Example:
    >>> from lightning_stream.testing import assert_resume_equivalent
    >>> report = assert_resume_equivalent(lambda: make_dm(), stop_at_step=7, max_steps=30, tmp_path=tmp)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["assert_resume_equivalent", "ResumeReport", "BatchRecorder", "IdModel", "batch_key"]


def batch_key(batch: Any, id_key: str = "id") -> tuple:
    """A comparable identity for a batch: its ``id_key`` column, else a digest of its tensors."""
    if isinstance(batch, dict) and id_key in batch:
        ids = batch[id_key]
        return tuple(ids.tolist() if isinstance(ids, torch.Tensor) else ids)
    digest = hashlib.sha1()
    tensors = batch.values() if isinstance(batch, dict) else (batch if isinstance(batch, (list, tuple)) else [batch])
    for t in tensors:
        if isinstance(t, torch.Tensor):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(t).encode())
    return (digest.hexdigest(),)


class BatchRecorder(pl.Callback):
    """Records ``(epoch, batch_key(batch))`` for every batch that reaches ``training_step``.

    With ``path``, the record is appended to that JSON-lines file as training goes (usable from
    a CLI config: ``--trainer.callbacks+=lightning_stream.testing.BatchRecorder``).
    """

    def __init__(self, id_key: str = "id", path: str | None = None) -> None:
        self.id_key = id_key
        self.path = path
        self.batches: list[tuple[int, tuple]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        entry = (trainer.current_epoch, batch_key(batch, self.id_key))
        self.batches.append(entry)
        if self.path is not None and trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps([trainer.global_step, entry[0], list(entry[1])]) + "\n")


class IdModel(pl.LightningModule):
    """The smallest module that trains on any batch: one parameter, a loss that ignores the data."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.w - 1.0).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Crash(Exception):
    pass


class _CrashAfter(pl.Callback):
    """Stops the run as a crash would, once step ``k``'s checkpoint has been written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise _Crash(f"simulated crash after step {self.step}")


@dataclass
class ResumeReport:
    """What the check compared."""

    uninterrupted: list[tuple[int, tuple]]
    before_crash: list[tuple[int, tuple]]
    after_resume: list[tuple[int, tuple]]
    checkpoint: str


def _trainer(root: str, callbacks: list, trainer_kwargs: dict) -> pl.Trainer:
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    kwargs.update(trainer_kwargs)
    kwargs["callbacks"] = callbacks + list(kwargs.get("callbacks") or [])
    return pl.Trainer(**kwargs)


def assert_resume_equivalent(
    make_datamodule: Callable[[], pl.LightningDataModule],
    *,
    stop_at_step: int,
    tmp_path: str,
    make_model: Callable[[], pl.LightningModule] = IdModel,
    id_key: str = "id",
    **trainer_kwargs: Any,
) -> ResumeReport:
    """Assert that resuming from the step-``stop_at_step`` checkpoint replays the uninterrupted run.

    Args:
        make_datamodule: builds a fresh datamodule (called once per run).
        stop_at_step: optimizer step after which run B crashes; its checkpoint is resumed.
        tmp_path: directory for checkpoints.
        make_model: builds a fresh LightningModule (default: :class:`IdModel`).
        id_key: batch column that identifies rows (else batches are compared by digest).
        **trainer_kwargs: passed to ``pl.Trainer`` (``max_steps``, ``max_epochs``, ...).

    Returns:
        A :class:`ResumeReport`; raises ``AssertionError`` naming the first differing batch.
    """
    pl.seed_everything(0, workers=True, verbose=False)
    rec_a = BatchRecorder(id_key)
    _trainer(os.path.join(tmp_path, "a"), [rec_a], trainer_kwargs).fit(make_model(), datamodule=make_datamodule())

    root_b = os.path.join(tmp_path, "b")
    if os.path.exists(root_b):
        raise ValueError(f"tmp_path {tmp_path} was used by an earlier check; pass a fresh directory")
    ckpt_cb = pl.callbacks.ModelCheckpoint(
        dirpath=os.path.join(root_b, "ckpt"), every_n_train_steps=stop_at_step, save_top_k=-1, filename="{step}"
    )
    rec_b = BatchRecorder(id_key)
    pl.seed_everything(0, workers=True, verbose=False)
    try:
        _trainer(root_b, [_CrashAfter(stop_at_step), rec_b, ckpt_cb], trainer_kwargs).fit(
            make_model(), datamodule=make_datamodule()
        )
    except _Crash:
        pass
    ckpt = os.path.join(root_b, "ckpt", f"step={stop_at_step}.ckpt")
    if not os.path.exists(ckpt):
        raise AssertionError(
            f"run B wrote no checkpoint at step {stop_at_step} (found {os.listdir(os.path.dirname(ckpt))})"
        )

    rec_c = BatchRecorder(id_key)
    pl.seed_everything(0, workers=True, verbose=False)
    _trainer(os.path.join(tmp_path, "c"), [rec_c], trainer_kwargs).fit(
        make_model(), datamodule=make_datamodule(), ckpt_path=ckpt
    )

    # The crash comes at the start of the first batch after step ``stop_at_step``, so run B
    # recorded exactly the batches that the checkpoint covers.
    k = len(rec_b.batches)
    report = ResumeReport(rec_a.batches, rec_b.batches, rec_c.batches, ckpt)
    if not k or rec_b.batches != rec_a.batches[:k]:
        raise AssertionError(
            f"run B trained {len(rec_b.batches)} batches before the crash, expected run A's first {k}: "
            "the order is not reproducible for a seed"
        )
    expected = rec_a.batches[k:]
    if rec_c.batches != expected:
        first = next(
            (i for i, (x, y) in enumerate(zip(rec_c.batches, expected)) if x != y),
            min(len(rec_c.batches), len(expected)),
        )
        raise AssertionError(
            f"resume from {ckpt} is not exact: {len(rec_c.batches)} batches after resume, expected {len(expected)} "
            f"(run A trained {len(rec_a.batches)}); first difference at resumed batch {first}: "
            f"got {rec_c.batches[first : first + 1]}, expected {expected[first : first + 1]}"
        )
    return report
