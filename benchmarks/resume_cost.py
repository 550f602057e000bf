"""Resume cost deep into one parquet file: lightning_stream vs datasets' own ``load_state_dict``.

Builds a 1M-row parquet file (row groups of 10k rows), then times "load the state + get the first
batch" at rows 0, 100k and 900k, median of 3, for:
  - lightning_stream (`StreamingDataModule.train_dataloader()`, shuffle off and on): the position
    is arithmetic, the row group holding it is read directly;
  - datasets (`load_dataset("parquet", streaming=True)` + `IterableDataset.load_state_dict`):
    re-reads the current shard up to the position.

    python benchmarks/resume_cost.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lightning_stream import StreamingDataModule  # noqa: E402

datasets.disable_progress_bars()


def median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours(path, position, shuffle):
    def make():
        return StreamingDataModule(train=path, batch_size=32, shuffle=shuffle, buffer_size=10_000).train_dataloader()

    state = make().state_dict()
    state.update(position=position, steps=position // 32)

    def resume():
        loader = make()
        loader.load_state_dict(state)
        next(iter(loader))

    return median_time(resume)


def hf_states(path, positions):
    ids = datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)
    states, targets = {}, sorted(positions)
    if 0 in targets:
        states[0] = ids.state_dict()
    for i, _ in enumerate(ids, start=1):
        if i in targets:
            states[i] = ids.state_dict()
            if len(states) == len(targets):
                break
    return states


def hf(path, state):
    def resume():
        ids = datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)
        ids.load_state_dict(state)
        next(iter(ids))

    return median_time(resume)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    a = p.parse_args()
    positions = [0, a.rows // 10, a.rows * 9 // 10]
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "big.parquet")
        n = a.rows
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(range(n), pa.int64()),
                    "text": [f"row {i} lorem ipsum dolor sit amet" for i in range(n)],
                }
            ),
            path,
            row_group_size=10_000,
        )
        states = hf_states(path, positions)
        rows = []
        for pos in positions:
            rows.append((pos, ours(path, pos, False), ours(path, pos, True), hf(path, states[pos])))
        print(
            "| resume at row | lightning_stream (ms) | vs row 0 | lightning_stream shuffled (ms) | vs row 0 | datasets load_state_dict (ms) | vs row 0 | datasets / lightning_stream |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base = rows[0]
        for pos, o, s, h in rows:
            print(
                f"| {pos:,} | {o * 1e3:.1f} | {o / base[1]:.2f}x | {s * 1e3:.1f} | {s / base[2]:.2f}x | {h * 1e3:.1f} | {h / base[3]:.2f}x | {h / o:.1f}x |"
            )


if __name__ == "__main__":
    main()
