"""Samples/s and CPU per sample over all processes, lightning_stream vs the plain recipe, by workers.

The VLM workload of issue #24: 448x448-class PNG images with captions in 16 arrow shards, a real
``Qwen2VLProcessor`` (built offline as in ``lightning_stream.vlm.zoo``, its image processor at
the hub default of up to 448x448 pixels) applied row by row in a batched map, batch 8, shuffle on
in both:

- *plain recipe*: ``load_from_disk().to_iterable_dataset(num_shards=16).shuffle(buffer_size)
  .map(batched=True)`` + torchdata's ``StatefulDataLoader``;
- *lightning_stream*: ``StreamingDataModule(...).train_dataloader()`` with the same function.

Each configuration runs one epoch in this process with non-persistent workers (so their CPU is
reaped and counted, ``os.times``); repeats alternate the two, and the medians are printed with
their ratio. Worker counts run up to the machine's cores (1, 2, 4, 8, 15).

``--workload pil`` runs the issue's 2-core case instead: ``throughput.py``'s VLM-like rows (a
64-256 px PNG and a caption), a PIL decode-resize-normalise transform, batch 16.

    python benchmarks/scaling.py [--workload qwen|pil] [--rows 1200] [--repeats 3] [--workers 1 2]
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
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import throughput  # noqa: E402

from lightning_stream import Map, StreamingDataModule  # noqa: E402
from lightning_stream.vlm.zoo import build_family  # noqa: E402

BATCH = 8
_PROCESSOR = None
DROP = ["id", "image", "caption"]


class Workload:
    """The rows, the user's batched map and collate, and the batch size of one comparison."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batch = BATCH if name == "qwen" else 16

    def make(self, root: str, rows: int) -> None:
        if self.name == "qwen":
            self.path, proc = make_rows(root, rows), processor_dir(root)
            self.transform, self.collate = Process(proc), collate
        else:
            self.path = throughput.make_vlm(root, rows)
            self.transform, self.collate = throughput.vlm_transform, _columns(throughput.collate_vlm)


class _columns:
    """A column-batch collate as a row-list collate (what both loaders hand it)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, rows: list[dict]) -> dict:
        return self.fn({k: [r[k] for r in rows] for k in rows[0]})


def make_rows(root: str, rows: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    images, captions = [], []
    for i in range(rows):
        h, w = (int(x) for x in rng.integers(320, 640, 2))
        noise = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(noise).resize((w, h))  # smooth enough to compress like a photo
        buf = io.BytesIO()
        img.save(buf, "PNG")
        images.append(buf.getvalue())
        captions.append(f"describe picture {i}: " + " ".join(["a shape"] * int(rng.integers(2, 20))))
    features = datasets.Features(
        {"id": datasets.Value("int64"), "image": datasets.Image(), "caption": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict({"id": list(range(rows)), "image": images, "caption": captions}, features=features)
    path = os.path.join(root, "vlm")
    ds.save_to_disk(path, num_shards=16)
    return path


def processor_dir(root: str) -> str:
    return build_family("qwen2_vl", os.path.join(root, "qwen2_vl"))


def _processor(path: str):
    global _PROCESSOR
    if _PROCESSOR is None:
        from lightning_stream.vlm.processor import load_processor

        _PROCESSOR = load_processor(path)  # the project's loader: no video processor without torchvision
        ip = _PROCESSOR.image_processor
        ip.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # the hub default's upper bound
        ip.min_pixels, ip.max_pixels = 56 * 56, 448 * 448
    return _PROCESSOR


class Process:
    """The user's batched map: the processor row by row (images of a batch differ in size)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, batch: dict) -> dict:
        proc = _processor(self.path)
        pixels, grids, ids = [], [], []
        for image, caption in zip(batch["image"], batch["caption"]):
            out = proc(
                images=[image.convert("RGB")],
                text=[f"<|vision_start|><|image_pad|><|vision_end|>{caption}"],
                return_tensors="np",
            )
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"][0])
            ids.append(out["input_ids"][0])
        return {"pixel_values": pixels, "image_grid_thw": grids, "input_ids": ids}


def collate(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.as_tensor(np.asarray(r["input_ids"]))
    return {
        "input_ids": ids,
        "pixel_values": torch.from_numpy(np.concatenate([np.asarray(r["pixel_values"]) for r in rows])),
        "image_grid_thw": torch.from_numpy(np.stack([np.asarray(r["image_grid_thw"]) for r in rows])),
    }


def plain(w: Workload, workers: int) -> int:
    ds = (
        datasets.load_from_disk(w.path)
        .to_iterable_dataset(num_shards=16 if w.name == "qwen" else 8)
        .shuffle(buffer_size=1000, seed=0)
        .map(w.transform, batched=True, batch_size=w.batch, remove_columns=DROP)
    )
    loader = StatefulDataLoader(ds, batch_size=w.batch, num_workers=workers, collate_fn=w.collate)
    return sum(len(b["input_ids"]) for b in loader)


def ours(w: Workload, workers: int) -> int:
    dm = StreamingDataModule(
        train=w.path,
        transform=Map(w.transform, remove_columns=DROP),
        collate_fn=w.collate,
        batch_size=w.batch,
        num_workers=workers,
        buffer_size=1000,
        persistent_workers=False,
    )
    return sum(len(b["input_ids"]) for b in dm.train_dataloader())


def run(fn, w: Workload, workers: int) -> tuple[float, float]:
    """(samples/s, CPU ms per sample over this process and its reaped workers)."""
    gc.collect()
    t0, wall = os.times(), time.perf_counter()
    n = fn(w, workers)
    wall, t1 = time.perf_counter() - wall, os.times()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    cpu += (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return n / wall, 1000 * cpu / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=None)
    p.add_argument("--workload", choices=["qwen", "pil"], default="qwen")
    a = p.parse_args()
    cores = os.cpu_count() or 1
    counts = a.workers or [w for w in (1, 2, 4, 8, 15) if w <= max(1, cores - 1) or w == 1 or w <= cores]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        w = Workload(a.workload)
        w.make(root, a.rows)
        print(f"{a.workload}: {a.rows} rows, batch {w.batch}, {cores} cores; medians of {a.repeats}")
        print(
            "| workers | plain samples/s | ours samples/s | ours / plain | plain CPU ms/sample | ours CPU ms/sample | ours / plain |"
        )
        print("|---|---|---|---|---|---|---|")
        for k in counts:
            res = {"plain": [], "ours": []}
            for _ in range(a.repeats):
                for name, fn in (("plain", plain), ("ours", ours)):
                    res[name].append(run(fn, w, k))
            med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in res.items()}
            (ps, pc), (os_, oc) = med["plain"], med["ours"]
            print(
                f"| {k} | {ps:,.0f} | {os_:,.0f} | {os_ / ps:.2f}x | {pc:.2f} | {oc:.2f} | {oc / pc:.2f}x |", flush=True
            )


if __name__ == "__main__":
    main()
