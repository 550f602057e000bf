"""A user's project as the CLI test sees it: a datamodule subclass and a model sharing arguments."""

import json
import os

import lightning.pytorch as pl
import torch

from lightning_stream import StreamingDataModule


class GlueData(StreamingDataModule):
    """What users write later: a subclass adding their own arguments."""

    def __init__(self, tokenizer: str, num_labels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.num_labels = num_labels


class Classifier(pl.LightningModule):
    def __init__(self, out: str, batch_size: int = 1, tokenizer: str | None = None):
        super().__init__()
        self.out, self.batch_size, self.tokenizer = out, batch_size, tokenizer
        self.w = torch.nn.Parameter(torch.zeros(1))

    def _record(self, stage, batch, idx):
        with open(os.path.join(self.out, "seen.jsonl"), "a") as f:
            f.write(json.dumps([stage, idx, batch["id"].tolist()]) + "\n")

    def on_fit_start(self):
        with open(os.path.join(self.out, "model.json"), "w") as f:
            json.dump(
                {
                    "batch_size": self.batch_size,
                    "tokenizer": self.tokenizer,
                    "names": self.trainer.datamodule.val_names,
                },
                f,
            )

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._record("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._record("test", batch, dataloader_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
