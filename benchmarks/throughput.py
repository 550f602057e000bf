"""Loader throughput: lightning_stream vs the plain recipe vs a bare pyarrow loop, in one run.

Workloads (rows built here, in a temp dir):
  cheap: 200k rows of 64 token ids, batch 32, the transform adds labels = input_ids;
  vlm:   4k rows of a 64-256 px PNG + caption; the transform decodes, resizes to 64x64, tokenizes.
Configs: bare pyarrow loop (one process, same transform), the plain recipe
(`load_from_disk().to_iterable_dataset(num_shards=8)` + `map(batched)` + `StatefulDataLoader`),
and `StreamingDataModule.train_dataloader()` (shuffle on, for the cheap workload also with
`batch_format="numpy"`), at num_workers 0 and 2. Median of 3 repeats.

    python benchmarks/throughput.py [--rows 200000] [--vlm-rows 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

import datasets
from torchdata.stateful_dataloader import StatefulDataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lightning_stream import Map, StreamingDataModule  # noqa: E402

datasets.disable_progress_bars()


def cheap_transform(batch):
    return {"labels": batch["input_ids"]}


def vlm_transform(batch):
    from PIL import Image

    pixels, ids = [], []
    for img, cap in zip(batch["image"], batch["caption"]):
        if isinstance(img, dict):
            img = Image.open(io.BytesIO(img["bytes"]))
        pixels.append(np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32).transpose(2, 0, 1) / 255.0)
        tok = [hash(w) % 1000 for w in cap.split()][:16]
        ids.append(tok + [0] * (16 - len(tok)))
    return {"pixel_values": pixels, "input_ids": ids}


def collate_cheap(batch):
    return {"input_ids": torch.tensor(batch["input_ids"]), "labels": torch.tensor(batch["labels"])}


def collate_vlm(batch):
    return {"pixel_values": torch.from_numpy(np.stack(batch["pixel_values"])), "input_ids": torch.tensor(batch["input_ids"])}


def make_cheap(root, rows):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 32000, size=(rows, 64)).tolist()
    ds = datasets.Dataset.from_dict({"id": list(range(rows)), "input_ids": ids})
    path = os.path.join(root, "cheap")
    ds.save_to_disk(path, num_shards=8)
    return path


def make_vlm(root, rows):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images, captions = [], []
    for i in range(rows):
        size = int(rng.integers(64, 257))
        img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(img).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="red")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        images.append(buf.getvalue())
        captions.append(f"a red circle on a plain background number {i}")
    features = datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"id": list(range(rows)), "image": images, "caption": captions}, features=features)
    path = os.path.join(root, "vlm")
    ds.save_to_disk(path, num_shards=8)
    return path


def bare(path, transform, collate, bs):
    table = datasets.load_from_disk(path).data.table
    features = datasets.load_from_disk(path).features
    n = 0
    for batch in table.to_batches(bs):
        cols = batch.to_pydict()
        if "image" in cols:
            cols["image"] = [features["image"].decode_example(v) for v in cols["image"]]
        out = collate({**cols, **transform(cols)})
        n += len(next(iter(out.values())))
    return n


def plain(path, transform, collate, bs, workers, drop):
    ds = datasets.load_from_disk(path).to_iterable_dataset(num_shards=8).map(transform, batched=True, batch_size=bs, remove_columns=drop)

    def coll(rows):
        return collate({k: [r[k] for r in rows] for k in rows[0]})

    loader = StatefulDataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=coll)
    return sum(len(b["input_ids"]) for b in loader)


def ours(path, transform, collate, bs, workers, drop, fmt="python"):
    dm = StreamingDataModule(train=path, transform=Map(transform, remove_columns=drop), batch_size=bs, num_workers=workers,
                             buffer_size=10_000, batch_format=fmt)
    return sum(len(b["input_ids"]) for b in dm.train_dataloader())


def timed(fn, repeats):
    times, n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--vlm-rows", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        workloads = {
            "cheap (bs 32)": (make_cheap(root, a.rows), cheap_transform, collate_cheap, 32, ["id"]),
            "vlm-like (bs 16)": (make_vlm(root, a.vlm_rows), vlm_transform, collate_vlm, 16, ["id", "image", "caption"]),
        }
        print(f"| workload | config | samples/s | vs bare | vs plain (same workers) |")
        print("|---|---|---|---|---|")
        for name, (path, tf, coll, bs, drop) in workloads.items():
            base = timed(lambda: bare(path, tf, coll, bs), a.repeats)
            print(f"| {name} | bare pyarrow loop | {base:,.0f} | 1.00x | |")
            for w in (0, 2):
                pr = timed(lambda: plain(path, tf, coll, bs, w, drop), a.repeats)
                us = timed(lambda: ours(path, tf, None, bs, w, drop), a.repeats)
                print(f"| {name} | plain recipe, {w} workers | {pr:,.0f} | {pr / base:.2f}x | 1.00x |")
                print(f"| {name} | lightning_stream, {w} workers | {us:,.0f} | {us / base:.2f}x | {us / pr:.2f}x |")
                if name.startswith("cheap"):
                    un = timed(lambda: ours(path, tf, None, bs, w, drop, "numpy"), a.repeats)
                    print(f"| {name} | lightning_stream, batch_format=numpy, {w} workers | {un:,.0f} | {un / base:.2f}x | {un / pr:.2f}x |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
