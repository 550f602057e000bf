"""Check that the tiny VLM learns the shapes data on a CPU, without the streaming core.

Trains :class:`~lightning_stream.vlm.VisionLanguageModel` with a plain ``DataLoader`` over
the parquet shards, validates before and after every epoch, then answers the validation
questions by greedy generation and reports exact-match accuracy per question kind.

Usage::

    python examples/vlm/learn_shapes.py --data /tmp/shapes --epochs 6 --threads 1

The numbers it printed are in ``examples/vlm/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import time

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_stream.vlm import ShapesData, VisionLanguageModel, VLMCollator, VLMTransform
from lightning_stream.vlm.data import QUESTIONS


class Rows(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset`` that runs the transform per row."""

    def __init__(self, ds: datasets.Dataset, transform: VLMTransform) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        out = self.transform({k: [v] for k, v in self.ds[i].items()})
        return {k: v[0] for k, v in out.items()}


class History(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.rows.append(
            {
                "step": trainer.global_step,
                "val_loss": round(float(m["val/loss"]), 4),
                "val_answer_acc": round(float(m["val/answer_acc"]), 4),
                "train_loss": round(float(m.get("train/loss", float("nan"))), 4),
            }
        )
        print("validation", self.rows[-1], flush=True)


def kind_of(question: str) -> str:
    for kind, templates in QUESTIONS.items():
        for template in templates:
            head = template.split("{")[0]
            if question.startswith(head) and (head or template == question):
                return kind
    return "?"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/tmp/shapes")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--val-rows", type=int, default=200)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", default="{}", help="JSON for build_tiny_vlm")
    p.add_argument("--model-dir", default=None, help="default DATA/model")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping norm")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    pl.seed_everything(args.seed, verbose=False)

    model_dir = args.model_dir or f"{args.data}/model"
    ShapesData(
        args.data,
        num_rows=args.rows,
        val_rows=args.val_rows,
        model_dir=model_dir,
        model_kwargs=json.loads(args.model_kwargs),
    )()
    transform = VLMTransform(model_dir, max_length=128)
    collate = VLMCollator(model_dir)
    load = lambda split: datasets.load_dataset(  # noqa: E731
        "parquet", data_files=f"{args.data}/{split}-*.parquet", split="train"
    )
    train_ds, val_ds = load("train"), load("val")
    train = DataLoader(Rows(train_ds, transform), args.batch_size, shuffle=True, collate_fn=collate)
    val = DataLoader(Rows(val_ds, transform), 50, collate_fn=collate)

    model = VisionLanguageModel(
        model_dir, learning_rate=args.lr, warmup_ratio=args.warmup, weight_decay=args.weight_decay
    )
    history = History()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=[history],
        enable_model_summary=False,
        gradient_clip_val=args.clip,
    )
    start = time.perf_counter()
    trainer.validate(model, val, verbose=False)
    trainer.fit(model, train, val)
    train_s = time.perf_counter() - start

    hits: dict[str, list[int]] = collections.defaultdict(list)
    model.eval()
    for row in val_ds:
        got = model.generate_answer(row["image"], row["question"], max_new_tokens=4)
        hits[kind_of(row["question"])].append(int(got == row["answer"]))
    exact = {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
    total = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    n_params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "params": n_params,
                "train_rows": args.rows,
                "val_rows": args.val_rows,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "clip": args.clip,
                "precision": args.precision,
                "threads": args.threads,
                "model_kwargs": json.loads(args.model_kwargs),
                "first": history.rows[0],
                "last": history.rows[-1],
                "loss_ratio": round(history.rows[-1]["val_loss"] / history.rows[0]["val_loss"], 4),
                "exact_match": round(total, 4),
                "exact_match_by_kind": exact,
                "fit_wall_s": round(train_s, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
