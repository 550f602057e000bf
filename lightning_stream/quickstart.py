"""A one-minute example: a tiny causal LM learns generated sentences streamed from parquet.

Everything is offline: :class:`TextData` writes the sentences as parquet shards and trains a
word-level tokenizer with ``tokenizers``; :class:`Tokenize` is the transform the workers run;
:class:`TinyCausalLM` is a ``transformers`` Llama built from a config with random weights.
``examples/quickstart.yaml`` wires them into ``lightning-stream fit``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import lightning.pytorch as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchmetrics import MeanMetric

from .schedules import warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["TextData", "Tokenize", "TinyCausalLM"]

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
_ANIMALS = {"cat": "fish", "dog": "bones", "cow": "grass", "bird": "seeds", "bear": "honey", "mouse": "cheese"}
_COLORS = ["red", "green", "blue", "yellow", "black", "white"]
_SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def _sentence(rng: random.Random) -> str:
    # Two patterns with real dependencies (the sum, the animal's food) so the loss can fall far.
    if rng.random() < 0.5:
        a, b = rng.randint(0, 6), rng.randint(0, 6)
        return f"{_NUMBERS[a]} plus {_NUMBERS[b]} is {_NUMBERS[a + b]} ."
    animal = rng.choice(list(_ANIMALS))
    return f"the {rng.choice(_COLORS)} {animal} eats {_ANIMALS[animal]} ."


class TextData:
    """Writes ``train-*.parquet`` (4 shards of unequal size), ``val-00000.parquet`` and ``tokenizer.json``.

    Idempotent: does nothing when the files exist. Usable as the datamodule's ``prepare``.

    Example:
        >>> TextData("data/quickstart", num_rows=4000)()  # doctest: +SKIP
    """

    def __init__(self, out_dir: str, num_rows: int = 4000, val_rows: int = 512, seed: int = 0) -> None:
        self.out_dir, self.num_rows, self.val_rows, self.seed = out_dir, num_rows, val_rows, seed

    def __call__(self) -> None:
        done = os.path.join(self.out_dir, "tokenizer.json")
        if os.path.exists(done):
            return
        os.makedirs(self.out_dir, exist_ok=True)
        rng = random.Random(self.seed)
        texts = [_sentence(rng) for _ in range(self.num_rows + self.val_rows)]
        cuts = [0, self.num_rows // 10, self.num_rows // 2, self.num_rows * 6 // 10, self.num_rows]
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            self._write(f"train-{i:05d}.parquet", range(a, b), texts)
        self._write("val-00000.parquet", range(self.num_rows, self.num_rows + self.val_rows), texts)
        self._train_tokenizer(texts, done)
        log.info("wrote %d train and %d val rows to %s", self.num_rows, self.val_rows, self.out_dir)

    def _write(self, name: str, ids: range, texts: list[str]) -> None:
        table = pa.table({"id": list(ids), "text": [texts[i] for i in ids]})
        pq.write_table(table, os.path.join(self.out_dir, name), row_group_size=256)

    @staticmethod
    def _train_tokenizer(texts: list[str], path: str) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=_SPECIALS))
        tok.save(path)


class Tokenize:
    """Batched transform: ``text`` -> padded ``input_ids``, ``attention_mask`` and ``labels``.

    The tokenizer is loaded lazily, in the worker that first needs it.
    """

    def __init__(self, tokenizer: str, max_length: int = 24, text_column: str = "text") -> None:
        self.tokenizer, self.max_length, self.text_column = tokenizer, max_length, text_column
        self._tok: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(self.tokenizer)
        bos, eos, pad = (self._tok.token_to_id(t) for t in ("[BOS]", "[EOS]", "[PAD]"))
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for enc in self._tok.encode_batch(batch[self.text_column]):
            ids = ([bos] + enc.ids + [eos])[: self.max_length]
            n = len(ids)
            out["input_ids"].append(ids + [pad] * (self.max_length - n))
            out["attention_mask"].append([1] * n + [0] * (self.max_length - n))
            out["labels"].append(ids + [-100] * (self.max_length - n))
        return out


class TinyCausalLM(pl.LightningModule):
    """A ``transformers`` Llama with random weights, sized for a CPU.

    Args:
        tokenizer: path of the ``tokenizer.json`` (gives the vocabulary size).
        hidden_size, num_layers: model size.
        learning_rate: AdamW peak learning rate; warmup then cosine over
            ``trainer.estimated_stepping_batches``.
    """

    def __init__(
        self,
        tokenizer: str,
        hidden_size: int = 64,
        num_layers: int = 2,
        learning_rate: float = 3e-3,
        warmup_ratio: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self.val_loss = MeanMetric()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from tokenizers import Tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM

        hp = self.hparams
        vocab = Tokenizer.from_file(hp.tokenizer).get_vocab_size()
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hp.hidden_size,
            intermediate_size=hp.hidden_size * 2,
            num_hidden_layers=hp.num_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
        self.model = LlamaForCausalLM(config)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def setup(self, stage: str) -> None:
        # One metric per validation set (``val={name: source, ...}``), logged as ``val/<name>/loss``;
        # a single set keeps the plain ``val/loss``.
        names = getattr(self.trainer.datamodule, "val_names", None) if self._trainer is not None else None
        if names and len(names) > 1:
            self.val_losses = torch.nn.ModuleDict({name: MeanMetric() for name in names})

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        losses = getattr(self, "val_losses", None)
        if losses is None:
            self.val_loss.update(self._loss(batch), weight=len(batch["input_ids"]))
            self.log("val/loss", self.val_loss, prog_bar=True)
            return
        name = list(losses)[dataloader_idx]
        losses[name].update(self._loss(batch), weight=len(batch["input_ids"]))
        self.log(f"val/{name}/loss", losses[name], prog_bar=True, add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate, weight_decay=0.01)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(int(total * self.hparams.warmup_ratio), total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
