"""Where the CPU goes when 2 workers make VLM-like batches on a 2-core machine.

Runs the VLM-like workload of `throughput.py` (decode a 64-256 px PNG, resize, tokenize, batch
16) through `StreamingDataModule` at 0 and 2 workers, alternating, and reports per epoch the
samples/s, the CPU seconds of the main process and of the workers, and how many cores were busy
on average. With the machine saturated, the 2-worker speed-up over 0 workers is bounded by
cores busy / (total CPU / 0-worker CPU).

    python benchmarks/cpu_share.py [--rows 8000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from throughput import make_vlm, vlm_transform  # noqa: E402

from lightning_stream import Map, StreamingDataModule  # noqa: E402


def epoch(path: str, workers: int) -> tuple[float, float, float, float]:
    # Non-persistent workers exit (and are waited for) at the epoch's end, so their CPU is counted.
    dm = StreamingDataModule(
        train=path,
        transform=Map(vlm_transform, remove_columns=["id", "image", "caption"]),
        batch_size=16,
        num_workers=workers,
        buffer_size=10_000,
        persistent_workers=False,
    )
    gc.collect()
    t0, wall = os.times(), time.perf_counter()
    n = sum(len(b["input_ids"]) for b in dm.train_dataloader())
    wall, t1 = time.perf_counter() - wall, os.times()
    main = t1.user - t0.user + t1.system - t0.system
    work = t1.children_user - t0.children_user + t1.children_system - t0.children_system
    return n / wall, wall, main, work


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        path = make_vlm(root, a.rows)
        print(
            "| workers | samples/s | wall (s) | main CPU (s) | workers CPU (s) | cores busy | vs previous 0-worker epoch |"
        )
        print("|---|---|---|---|---|---|---|")
        single = None
        for _ in range(a.repeats):
            for w in (0, 2):
                rate, wall, main_cpu, work = epoch(path, w)
                single = rate if w == 0 else single
                print(
                    f"| {w} | {rate:,.0f} | {wall:.2f} | {main_cpu:.2f} | {work:.2f} | {(main_cpu + work) / wall:.2f} | {rate / single:.2f}x |"
                )
                sys.stdout.flush()


if __name__ == "__main__":
    main()
