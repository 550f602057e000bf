"""fit with two named validation sets, then test and predict, on 1 or more ranks (gloo).

Each rank appends ``[stage, dataloader_idx, ids]`` per evaluation batch to ``OUT/rank{R}.jsonl``;
predictions (the ids each rank predicted, in order) go to ``OUT/predict-rank{R}.json``.
"""

import argparse
import json
import os
import sys

import lightning.pytorch as pl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_stream import StreamingDataModule  # noqa: E402
from lightning_stream.testing import IdModel  # noqa: E402


class Model(IdModel):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def _record(self, stage, batch, idx):
        with open(os.path.join(self.out, f"rank{self.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps([stage, idx, batch["id"].tolist()]) + "\n")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._record("val", batch, dataloader_idx)
        name = self.trainer.datamodule.val_names[dataloader_idx]
        self.log(f"val/{name}/rows", float(len(batch["id"])), reduce_fx="sum", add_dataloader_idx=False, sync_dist=True)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._record("test", batch, dataloader_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return batch["id"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    d = a.data
    dm = StreamingDataModule(
        train=os.path.join(d, "train.parquet"),
        val={"matched": os.path.join(d, "matched.parquet"), "mismatched": os.path.join(d, "mismatched.parquet")},
        test=os.path.join(d, "matched.parquet"),
        predict=os.path.join(d, "mismatched.parquet"),
        batch_size=8,
        val_batch_size=7,
        num_workers=a.workers,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=a.devices,
        strategy="ddp" if a.devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    model = Model(a.out)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    predictions = trainer.predict(model, datamodule=dm)
    with open(os.path.join(a.out, f"predict-rank{trainer.global_rank}.json"), "w") as f:
        json.dump([i for b in predictions for i in b.tolist()], f)
    if trainer.is_global_zero:
        with open(os.path.join(a.out, "names.json"), "w") as f:
            json.dump(dm.val_names, f)


if __name__ == "__main__":
    main()
