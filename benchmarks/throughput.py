"""Loader throughput: lightning_stream vs the plain recipe vs a bare pyarrow loop, in one run.

Workloads (rows built here, in a temp dir):
  cheap: 200k rows of 64 token ids, batch 32, the transform adds labels = input_ids;
  vlm:   4k rows of a 64-256 px PNG + caption; the transform decodes, resizes to 64x64, tokenizes.
Configs: bare pyarrow record-batch loop (one process, same transform; for the cheap workload
also with numpy columns instead of Python lists), the plain recipe
(`load_from_disk().to_iterable_dataset(num_shards=8)` + `map(batched)` + `StatefulDataLoader`,
no shuffle), `StreamingDataModule.train_dataloader()` (shuffle on; for the cheap workload also
with `batch_format="numpy"`) and, when `litdata` imports, litdata's `StreamingDataset` over its
`optimize` output of the same rows (shuffle on, the transform in `__getitem__`), at num_workers
0 and 2. Repeats are interleaved; the median is reported.

    python benchmarks/throughput.py [--rows 200000] [--vlm-rows 8000] [--repeats 3] [--no-litdata] [--workloads cheap vlm]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import sys
import tempfile
import time

import datasets
import numpy as np
import pyarrow as pa
import torch
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
    return {
        "pixel_values": torch.from_numpy(np.stack(batch["pixel_values"])),
        "input_ids": torch.tensor(batch["input_ids"]),
    }


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
    features = datasets.Features(
        {"id": datasets.Value("int64"), "image": datasets.Image(), "caption": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict({"id": list(range(rows)), "image": images, "caption": captions}, features=features)
    path = os.path.join(root, "vlm")
    ds.save_to_disk(path, num_shards=8)
    return path


def bare_numpy(path, bs):
    table = datasets.load_from_disk(path).data.table
    n = 0
    for batch in table.to_batches(bs):
        ids = batch.column("input_ids")
        ids = torch.from_numpy(ids.flatten().to_numpy().reshape(len(ids), -1).astype(np.int64))
        out = {"input_ids": ids, "labels": ids.clone()}
        n += len(out["input_ids"])
    return n


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
    ds = (
        datasets.load_from_disk(path)
        .to_iterable_dataset(num_shards=8)
        .map(transform, batched=True, batch_size=bs, remove_columns=drop)
    )

    def coll(rows):
        return collate({k: [r[k] for r in rows] for k in rows[0]})

    loader = StatefulDataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=coll)
    return sum(len(b["input_ids"]) for b in loader)


def ours(path, transform, collate, bs, workers, drop, fmt="python", shuffle=True, snapshot=False):
    dm = StreamingDataModule(
        train=path,
        transform=Map(transform, remove_columns=drop),
        batch_size=bs,
        num_workers=workers,
        buffer_size=10_000,
        batch_format=fmt,
        shuffle=shuffle,
    )
    loader = dm.train_dataloader()
    n = 0
    for b in loader:
        n += len(b["input_ids"])
        if snapshot:  # what a checkpoint at every step would cost
            loader.state_dict()
    return n


# -- litdata (optional peer) -----------------------------------------------------------------------
def _lit_rows(bounds, path, ids):
    ds = datasets.load_from_disk(path).with_format("numpy" if ids else None)
    for i in range(*bounds):
        row = ds[i]
        if "image" in row:
            yield {
                "image": row["image"]["bytes"] if isinstance(row["image"], dict) else _png(row["image"]),
                "caption": row["caption"],
            }
        else:
            yield {"input_ids": row["input_ids"].astype(np.int32)}


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def lit_write(path, out, ids):
    import multiprocessing
    from functools import partial

    import litdata

    rows = datasets.load_from_disk(path).num_rows
    per = max(1, rows // 16)
    inputs = [(a, min(a + per, rows)) for a in range(0, rows, per)]
    method = multiprocessing.get_start_method()
    litdata.optimize(
        fn=partial(_lit_rows, path=path, ids=ids),
        inputs=inputs,
        output_dir=out,
        chunk_bytes="64MB",
        num_workers=2,
        mode="overwrite",
        verbose=False,
    )
    multiprocessing.set_start_method(method, force=True)  # optimize() switches the whole process to spawn
    return out


def lit_loader(out, workload, bs, workers):
    import litdata

    class Cheap(litdata.StreamingDataset):
        def __getitem__(self, index):
            ids = torch.from_numpy(np.asarray(super().__getitem__(index)["input_ids"], dtype=np.int64))
            return {"input_ids": ids, "labels": ids}

    class Vlm(litdata.StreamingDataset):
        def __getitem__(self, index):
            from PIL import Image

            row = super().__getitem__(index)
            out = vlm_transform({"image": [Image.open(io.BytesIO(row["image"]))], "caption": [row["caption"]]})
            return {
                "pixel_values": torch.from_numpy(out["pixel_values"][0]),
                "input_ids": torch.tensor(out["input_ids"][0]),
            }

    ds = (Cheap if workload == "cheap" else Vlm)(out, shuffle=True, seed=0)
    return sum(len(b["input_ids"]) for b in litdata.StreamingDataLoader(ds, batch_size=bs, num_workers=workers))


def measure(configs, repeats):
    """samples/s per config: repeats interleaved (drift hits every config alike), median."""
    times = {name: [] for name in configs}
    rows = {}
    for _ in range(repeats):
        for name, fn in configs.items():
            gc.collect()  # shut down the previous run's (persistent) workers outside the timing
            t = time.perf_counter()
            rows[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: rows[name] / statistics.median(ts) for name, ts in times.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--vlm-rows", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-litdata", action="store_true")
    p.add_argument("--workloads", nargs="+", default=["cheap", "vlm"], choices=["cheap", "vlm"])
    a = p.parse_args()
    torch.set_num_threads(1)
    try:
        import litdata  # noqa: F401

        have_litdata = not a.no_litdata
    except ImportError:
        have_litdata = False
    print(
        f"cpus={os.cpu_count()} torch={torch.__version__} datasets={datasets.__version__} pyarrow={pa.__version__} "
        f"litdata={'yes' if have_litdata else 'no'}\n"
    )
    with tempfile.TemporaryDirectory() as root:
        workloads = {}
        if "cheap" in a.workloads:
            workloads["cheap"] = ("cheap (bs 32)", make_cheap(root, a.rows), cheap_transform, collate_cheap, 32, ["id"])
        if "vlm" in a.workloads:
            workloads["vlm"] = (
                "vlm-like (bs 16)",
                make_vlm(root, a.vlm_rows),
                vlm_transform,
                collate_vlm,
                16,
                ["id", "image", "caption"],
            )
        print("| workload | config | samples/s | vs bare | vs plain (same workers) |")
        print("|---|---|---|---|---|")
        for key, (title, path, tf, coll, bs, drop) in workloads.items():
            configs = {"bare pyarrow loop": lambda: bare(path, tf, coll, bs)}
            if key == "cheap":
                configs["bare pyarrow loop, numpy columns"] = lambda: bare_numpy(path, bs)
            lit = lit_write(path, os.path.join(root, f"lit-{key}"), key == "cheap") if have_litdata else None
            for w in (0, 2):
                configs[f"plain recipe, {w} workers"] = lambda w=w: plain(path, tf, coll, bs, w, drop)
                configs[f"lightning_stream, {w} workers"] = lambda w=w: ours(path, tf, None, bs, w, drop)
                if key == "cheap":
                    configs[f"lightning_stream, batch_format=numpy, {w} workers"] = lambda w=w: ours(
                        path, tf, None, bs, w, drop, "numpy"
                    )
                if key == "cheap":
                    configs[f"lightning_stream, batch_format=numpy, state_dict() every step, {w} workers"] = (
                        lambda w=w: ours(path, tf, None, bs, w, drop, "numpy", snapshot=True)
                    )
                if key == "cheap" and w == 0:
                    configs["lightning_stream, batch_format=numpy, shuffle off, 0 workers"] = lambda: ours(
                        path, tf, None, bs, 0, drop, "numpy", False
                    )
                if lit:
                    configs[f"litdata, {w} workers"] = lambda w=w: lit_loader(lit, key, bs, w)
            rates = measure(configs, a.repeats)
            base = rates["bare pyarrow loop"]
            for name, rate in rates.items():
                plain_rate = next((rates[k] for k in rates if k.startswith("plain") and k.endswith(name[-9:])), None)
                vs_plain = f"{rate / plain_rate:.2f}x" if plain_rate and "workers" in name else ""
                print(f"| {title} | {name} | {rate:,.0f} | {rate / base:.2f}x | {vs_plain} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
