"""Memory while streaming: peak RSS at 100k vs 1M rows, and a 3-epoch soak.

Each case runs in a fresh process that streams a parquet file of ~150-byte rows through
`StreamingDataModule` (shuffle on, batched map, 2 workers) and samples the RSS of the main
process and of its workers from /proc every 50 batches.

    python benchmarks/memory.py              # 100k vs 1M rows, one epoch each
    python benchmarks/memory.py --soak       # 3 epochs over 200k rows: RSS at each epoch end
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def child_main(path: str, epochs: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lightning_stream import StreamingDataModule

    def tokenize(batch):
        return {"n": [len(t.split()) for t in batch["text"]]}

    loader = StreamingDataModule(
        train=path, transform=tokenize, batch_size=64, num_workers=2, buffer_size=10_000
    ).train_dataloader()
    me = os.getpid()
    report = {"main": [], "workers": []}
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        peak_main = peak_workers = 0.0
        for i, _ in enumerate(loader):
            if i % 50 == 0:
                peak_main = max(peak_main, rss_mb(me))
                peak_workers = max(peak_workers, sum(rss_mb(c) for c in children(me)))
        report["main"].append(round(peak_main, 1))
        report["workers"].append(round(peak_workers, 1))
    print(json.dumps(report))


def make(path: str, rows: int) -> None:
    text = [f"row {i} " + "lorem ipsum dolor sit amet consectetur " * 3 for i in range(rows)]
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()), "text": text}), path, row_group_size=2000)


def run(path: str, epochs: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, str(epochs)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--soak", action="store_true")
    p.add_argument("--child", nargs=2)
    a = p.parse_args()
    if a.child:
        child_main(a.child[0], int(a.child[1]))
        return
    with tempfile.TemporaryDirectory() as root:
        if a.soak:
            path = os.path.join(root, "soak.parquet")
            make(path, 200_000)
            r = run(path, 3)
            print("| epoch | main peak RSS (MB) | workers peak RSS (MB) |\n|---|---|---|")
            for e, (m, w) in enumerate(zip(r["main"], r["workers"])):
                print(f"| {e} | {m} | {w} |")
            print(
                f"epoch 2 / epoch 0: main {r['main'][2] / r['main'][0]:.3f}x, workers {r['workers'][2] / r['workers'][0]:.3f}x"
            )
            return
        results = {}
        for rows in (100_000, 1_000_000):
            path = os.path.join(root, f"{rows}.parquet")
            make(path, rows)
            results[rows] = run(path, 1)
        print("| rows | main peak RSS (MB) | workers peak RSS (MB) |\n|---|---|---|")
        for rows, r in results.items():
            print(f"| {rows:,} | {r['main'][0]} | {r['workers'][0]} |")
        small, big = results[100_000], results[1_000_000]
        print(
            f"1M / 100k: main {big['main'][0] / small['main'][0]:.3f}x, workers {big['workers'][0] / small['workers'][0]:.3f}x"
        )


if __name__ == "__main__":
    main()
