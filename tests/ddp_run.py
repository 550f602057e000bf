"""One (possibly multi-process) training run, driven by the distributed tests.

Each rank appends ``[epoch, global_step, ids]`` per training batch to ``OUT/train-rank{R}.jsonl``;
rank 0 writes the validation metric to ``OUT/val.json``. Launch it directly (Lightning's DDP
launcher starts the other ranks) or under torchrun.
"""

import argparse
import json
import os
import sys
import time

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_stream import EmptyBatch, Filter, Source, StreamingDataModule, empty_step_loss  # noqa: E402
from lightning_stream.testing import IdModel  # noqa: E402


class Recorder(pl.Callback):
    def __init__(self, out):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        with open(os.path.join(self.out, f"meta-rank{trainer.global_rank}.json"), "w") as f:
            json.dump(
                {
                    "num_training_batches": trainer.num_training_batches,
                    "estimated_stepping_batches": trainer.estimated_stepping_batches,
                },
                f,
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(os.path.join(self.out, f"train-rank{trainer.global_rank}.jsonl"), "a") as f:
            ids = [] if isinstance(batch, EmptyBatch) else batch["id"].tolist()
            f.write(json.dumps([trainer.current_epoch, trainer.global_step, ids]) + "\n")


class Model(IdModel):
    def __init__(self, step_sleep=0.0):
        super().__init__()
        self.step_sleep = step_sleep
        self.val_mean = MeanMetric()
        self.val_rows = MeanMetric()

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        if isinstance(batch, EmptyBatch):
            loss = empty_step_loss(self)  # a zero loss on every parameter: the gradient sync still meets
        else:
            loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, sync_dist=True)  # a collective every step: uneven ranks would hang
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_mean.update(batch["id"].float())
        self.val_rows.update(torch.tensor(float(len(batch["id"]))), weight=1.0)
        self.log("val/mean", self.val_mean)
        self.log("val/loss", torch.zeros(()), sync_dist=True)


def empties_rank1_batches(row):
    """Unshuffled, batch 10 on 2 ranks: removes all of rank 1's batch at every third step."""
    return not ((row["id"] // 10) % 2 == 1 and (row["id"] // 20) % 3 == 0)


def slow_on_rank1(batch):
    """Rank 1's data is slow: its steps wait, rank 0's do not."""
    if os.environ.get("LOCAL_RANK") == "1":
        time.sleep(0.05)
    return batch


class Payload:
    """Adds ``kb`` KiB of float32 per row: batches that fill the worker pipe (by value up to 1 MiB)."""

    def __init__(self, kb):
        self.kb = kb

    def __call__(self, batch):
        import numpy as np

        return {"x": list(np.zeros((len(batch["id"]), self.kb * 256), dtype=np.float32))}


def row_tokens(row):
    """A varied, deterministic length for token-budget steps: 8 to 127 tokens."""
    return 8 + (row["id"] * 37) % 120


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--val", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--filter-empty", action="store_true")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--payload-kb", type=int, default=0)
    p.add_argument("--csv", action="store_true", help="log to OUT/csv/metrics.csv; rank 1's data is slow")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train = (
        a.train[0]
        if len(a.train) == 1 and not a.train[0].endswith(".parquet")
        else Source(path="parquet", data_files=a.train)
    )
    dm = StreamingDataModule(
        train=train,
        val=a.val,
        batch_size=a.batch_size,
        num_workers=a.workers,
        shuffle=not a.no_shuffle,
        buffer_size=64,
        seed=11,
        filter=Filter(empties_rank1_batches, batched=False) if a.filter_empty else None,
        batch_tokens=a.batch_tokens,
        length=row_tokens if a.batch_tokens else None,
        transform=slow_on_rank1 if a.csv else Payload(a.payload_kb) if a.payload_kb else None,
    )
    callbacks = [Recorder(a.out)]
    if a.ckpt_every:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=os.path.join(a.out, "ckpt"), every_n_train_steps=a.ckpt_every, save_top_k=-1, filename="{step}"
            )
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=a.devices,
        num_nodes=a.num_nodes,
        strategy="ddp" if a.devices * a.num_nodes > 1 else "auto",
        max_epochs=a.max_epochs,
        max_steps=a.max_steps,
        logger=pl.loggers.CSVLogger(a.out, name="csv", version="") if a.csv else False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(a.ckpt_every),
        callbacks=callbacks,
        num_sanity_val_steps=0,
        default_root_dir=a.out,
        limit_val_batches=1.0 if a.val else 0,
    )
    trainer.fit(Model(a.step_sleep), datamodule=dm, ckpt_path=a.resume)
    if trainer.is_global_zero and a.val:
        with open(os.path.join(a.out, "val.json"), "w") as f:
            json.dump({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}, f)
    if torch.distributed.is_initialized():
        # Lightning leaves the process group up; gloo's threads torn down by the interpreter's exit
        # can abort the process ("terminate called without an active exception", seen once in CI
        # on a loaded machine after a finished fit). A group destroyed here has no threads left.
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
