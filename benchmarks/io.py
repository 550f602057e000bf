"""Read volume: bytes read from the data files in one shuffled epoch, divided by their size.

    python benchmarks/io.py                  # 4 files x 5000 rows of ~1 KB, every reader config, ~9 min on 2 cores
    python benchmarks/io.py --quick          # readers 1x0 and 2x2 only, 4 x 2500 rows, ~5 min
    python benchmarks/io.py --rows 20000 --text-bytes 200 --out table.md

Readers are ``ranks x workers``: 1x0, 1x4, 2x2 and 4x2, the last two real DDP on gloo (CPU)
through ``Trainer(strategy="ddp")``. Sources: 4 parquet files (100-row row groups), the same
rows as a ``save_to_disk`` folder (4 arrow shards), as 4 ``.jsonl`` shards, and a ``Mix`` of
two parquet sets (files 0-1 and 2-3). Every run is one epoch, shuffle on, batch 32, buffer_size
1000. Rows carry ~1 KB of text so that a file is ~5 MB: pyarrow reads the last 64 KiB of a
parquet file (its footer) at every open, by every process, which is 6 % of a 1-MB file per open.
Fixed costs that stay whatever the file size: ``load_dataset("json", streaming=True)`` reads the
first 10 MB of the first file to infer the features at every call (with 4 shards of 5 MB: the
whole first shard, 0.25x per call), in each process that calls it.

Counting (``readcount.py``), from outside the program: parquet and jsonl under
``strace -f -y`` (bytes returned by read calls on the data files, every process and thread:
page-cache hits count, so a file read by 4 readers counts 4 times). Arrow files are memory-mapped
and read by page faults, which strace cannot see: their row is ``/proc/<pid>/io`` ``read_bytes``
of the whole process tree after evicting the files from the page cache, i.e. bytes brought in
from storage. The page cache is shared, so that figure stays near 1x (plus readahead) however
many readers touch the same pages: it is not the same quantity as the strace rows.

The plain recipe, as in the research probes (``plain-recipe-probes.md``):
``load_dataset(<builder>, data_files=..., streaming=True)`` (parquet, jsonl), or
``load_from_disk(...).to_iterable_dataset(num_shards=8)`` (arrow), or ``interleave_datasets``
of two parquet streams (mix); then ``.shuffle(seed=42, buffer_size=...)``,
``split_dataset_by_node(rank, world_size)`` and a torch ``DataLoader(num_workers=...)``, iterated
for one epoch in ``world_size`` plain processes (no Trainer: reading does not depend on it, and
uneven ranks would hang a DDP run, probe 4).

This file is also the driver the runs execute (``io.py run ...``); ``tests/test_io.py`` uses it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_readcount():
    """``readcount.py`` beside this file, without putting ``benchmarks/`` on ``sys.path``."""
    import importlib.util

    if "readcount" in sys.modules:
        return sys.modules["readcount"]
    spec = importlib.util.spec_from_file_location("readcount", os.path.join(HERE, "readcount.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["readcount"] = module
    spec.loader.exec_module(module)
    return module


readcount = _load_readcount()

SOURCES = ("parquet", "arrow", "jsonl", "mix")
READERS = ((1, 0), (1, 4), (2, 2), (4, 2))
ROW_GROUP = 100


# -- data -----------------------------------------------------------------------------------------
def make_data(
    root: str,
    *,
    files: int = 4,
    rows: int = 5000,
    text_bytes: int = 1000,
    row_group: int = ROW_GROUP,
    kinds=("parquet", "arrow", "jsonl"),
) -> dict[str, list[str]]:
    """The same rows as parquet files, a save_to_disk folder and jsonl shards.

    Row ``r`` of file ``f`` has ``id = f * rows + r`` and ~``text_bytes`` of random letters, so
    with ``rows % row_group == 0`` the parquet row group of an id is ``id // row_group``.
    Returns the data files of each kind (for arrow: the ``.arrow`` shards; the folder is their
    directory).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    tables = []
    for f in range(files):
        chars = letters[rng.integers(0, len(letters), size=rows * text_bytes)].tobytes().decode()
        text = [chars[i * text_bytes : (i + 1) * text_bytes] for i in range(rows)]
        tables.append(pa.table({"id": pa.array(range(f * rows, (f + 1) * rows), pa.int64()), "text": text}))
    out: dict[str, list[str]] = {}
    if "parquet" in kinds:
        os.makedirs(os.path.join(root, "parquet"), exist_ok=True)
        out["parquet"] = []
        for f, t in enumerate(tables):
            path = os.path.join(root, "parquet", f"part-{f:05d}.parquet")
            pq.write_table(t, path, row_group_size=row_group)
            out["parquet"].append(path)
    if "jsonl" in kinds:
        os.makedirs(os.path.join(root, "jsonl"), exist_ok=True)
        out["jsonl"] = []
        for f, t in enumerate(tables):
            path = os.path.join(root, "jsonl", f"part-{f:05d}.jsonl")
            with open(path, "w") as fh:
                for i, s in zip(t.column("id").to_pylist(), t.column("text").to_pylist()):
                    fh.write(json.dumps({"id": i, "text": s}) + "\n")
            out["jsonl"].append(path)
    if "arrow" in kinds:
        import datasets

        datasets.disable_progress_bars()
        folder = os.path.join(root, "arrow")
        datasets.Dataset(pa.concat_tables(tables)).save_to_disk(folder, num_shards=files)
        out["arrow"] = sorted(glob.glob(os.path.join(folder, "*.arrow")))
    return out


def source_files(data: str, source: str) -> list[str]:
    """The data files one source reads (mix: both parquet sets)."""
    kind = "parquet" if source == "mix" else source
    return sorted(glob.glob(os.path.join(data, kind, "*.arrow" if kind == "arrow" else f"*.{kind}")))


# -- what a run logged ----------------------------------------------------------------------------
def logged_batches(out: str) -> list[list[int]]:
    """Every batch's ids, over all ranks (``train-rank{R}.jsonl``: ``[epoch, step, ids]`` lines)."""
    batches = []
    for path in sorted(glob.glob(os.path.join(out, "train-rank*.jsonl"))):
        with open(path) as f:
            batches += [json.loads(line)[2] for line in f if line.strip()]
    return batches


def row_groups_per_batch(batches: list[list[int]], batch_size: int, row_group: int = ROW_GROUP) -> float:
    """Mean number of distinct row groups (``id // row_group``) in the full batches."""
    full = [b for b in batches if len(b) == batch_size]
    if not full:
        raise ValueError("no full batch was logged")
    return sum(len({i // row_group for i in b}) for b in full) / len(full)


# -- the runs (executed as `io.py run ...`, under the counter) ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lightning_source(data: str, source: str):
    from lightning_stream import Mix, Source

    if source == "parquet":
        return Source(path="parquet", data_files=source_files(data, "parquet"))
    if source == "jsonl":
        return Source(path="json", data_files=source_files(data, "jsonl"))
    if source == "arrow":
        return Source(path=os.path.join(data, "arrow"))
    files = source_files(data, "parquet")
    half = len(files) // 2
    return Mix([Source(path="parquet", data_files=files[:half]), Source(path="parquet", data_files=files[half:])])


def run_lightning(a) -> None:
    import lightning.pytorch as pl
    import torch

    import lightning_stream
    from lightning_stream import StreamingDataModule

    with open(os.path.join(a.out, "lightning_stream.txt"), "w") as f:
        f.write(os.path.dirname(lightning_stream.__file__))

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - 1.0).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Recorder(pl.Callback):
        def __init__(self):
            self.lines = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lines.append(json.dumps([trainer.current_epoch, trainer.global_step, batch["id"].tolist()]))

        def on_train_end(self, trainer, pl_module):
            with open(os.path.join(a.out, f"train-rank{trainer.global_rank}.jsonl"), "w") as f:
                f.write("".join(line + "\n" for line in self.lines))

    dm = StreamingDataModule(
        train=_lightning_source(a.data, a.source),
        batch_size=a.batch_size,
        num_workers=a.workers,
        shuffle=True,
        buffer_size=a.buffer_size,
        seed=a.seed,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=a.devices,
        strategy="ddp" if a.devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Recorder()],
        default_root_dir=a.out,
    )
    trainer.fit(Tiny(), datamodule=dm)


def _plain_dataset(data: str, source: str, buffer_size: int, rank: int, world: int):
    import datasets
    from datasets.distributed import split_dataset_by_node

    datasets.disable_progress_bars()
    # datasets sleeps 5 s after a shuffled or interleaved stream ends, once its reads are done
    # (probe 8): no read happens during that sleep, so it only makes the benchmark longer.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    if source == "arrow":
        ds = datasets.load_from_disk(os.path.join(data, "arrow")).to_iterable_dataset(num_shards=8)
    elif source == "mix":
        files = source_files(data, "parquet")
        half = len(files) // 2
        parts = [
            datasets.load_dataset("parquet", data_files=fs, split="train", streaming=True)
            for fs in (files[:half], files[half:])
        ]
        ds = datasets.interleave_datasets(parts, stopping_strategy="first_exhausted", seed=42)
    else:
        builder = "json" if source == "jsonl" else "parquet"
        ds = datasets.load_dataset(builder, data_files=source_files(data, source), split="train", streaming=True)
    ds = ds.shuffle(seed=42, buffer_size=buffer_size)
    return split_dataset_by_node(ds, rank=rank, world_size=world) if world > 1 else ds


def run_plain_rank(a) -> None:
    import torch

    ds = _plain_dataset(a.data, a.source, a.buffer_size, a.rank, a.devices)
    loader = torch.utils.data.DataLoader(ds.select_columns(["id"]), batch_size=a.batch_size, num_workers=a.workers)
    with open(os.path.join(a.out, f"train-rank{a.rank}.jsonl"), "w") as f:
        for step, batch in enumerate(loader):
            f.write(json.dumps([0, step, batch["id"].tolist()]) + "\n")


def run_plain(a) -> None:
    """``devices`` plain processes (no process group), each reading its split."""
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "run", *_run_args(a), "--rank", str(r)])
        for r in range(a.devices)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"plain recipe ranks exited with {codes}")


def _run_args(a) -> list[str]:
    return [
        "--loader",
        a.loader,
        "--source",
        a.source,
        "--data",
        a.data,
        "--out",
        a.out,
        "--devices",
        str(a.devices),
        "--workers",
        str(a.workers),
        "--batch-size",
        str(a.batch_size),
        "--buffer-size",
        str(a.buffer_size),
        "--seed",
        str(a.seed),
    ]


def run_command(
    loader: str,
    source: str,
    data: str,
    out: str,
    *,
    devices: int,
    workers: int,
    batch_size: int = 32,
    buffer_size: int = 1000,
    seed: int = 0,
) -> list[str]:
    """The command line of one run (to execute under a counter)."""
    ns = argparse.Namespace(
        loader=loader,
        source=source,
        data=data,
        out=out,
        devices=devices,
        workers=workers,
        batch_size=batch_size,
        buffer_size=buffer_size,
        seed=seed,
    )
    return [sys.executable, os.path.abspath(__file__), "run", *_run_args(ns)]


def run_env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    env.pop("LOCAL_RANK", None)
    return env


# -- one measured run -----------------------------------------------------------------------------
def measure(
    loader: str,
    source: str,
    data: str,
    *,
    devices: int,
    workers: int,
    batch_size: int = 32,
    buffer_size: int = 1000,
    timeout: float = 600,
    out: str | None = None,
) -> dict:
    """Run one epoch under the right counter. Returns bytes read, data bytes, ratio, batches."""
    files = source_files(data, source)
    size = sum(os.path.getsize(f) for f in files)
    out = out or tempfile.mkdtemp(prefix=f"io-{loader}-{source}-{devices}x{workers}-")
    os.makedirs(out, exist_ok=True)
    cmd = run_command(
        loader, source, data, out, devices=devices, workers=workers, batch_size=batch_size, buffer_size=buffer_size
    )
    t0 = time.perf_counter()
    per_task = None
    if source == "arrow":
        io = readcount.storage_reads(cmd, files, env=run_env(), cwd=out, timeout=timeout)
        rc, read, how, err = io["returncode"], io["read_bytes"], "read_bytes", io["stderr"]
    else:
        reads = readcount.strace_reads(cmd, data, env=run_env(), cwd=out, timeout=timeout)
        rc, read, how, err = reads.returncode, reads.total(files), "strace", reads.stderr
        per_task = sorted(reads.per_task.values(), reverse=True)
    if rc != 0:
        raise RuntimeError(f"{loader} {source} {devices}x{workers} exited with {rc}:\n{err[-4000:]}")
    batches = logged_batches(out)
    where = os.path.join(out, "lightning_stream.txt")
    package = open(where).read() if os.path.exists(where) else None
    return {
        "package": package,
        "loader": loader,
        "source": source,
        "devices": devices,
        "workers": workers,
        "read": read,
        "size": size,
        "ratio": read / size,
        "how": how,
        "per_task": per_task,
        "seconds": time.perf_counter() - t0,
        "batches": batches,
        "out": out,
    }


# -- the table ------------------------------------------------------------------------------------
def _where_lightning_stream() -> str:
    code = "import lightning_stream, sys; sys.stdout.write(lightning_stream.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir()
    ).stdout


def main() -> None:
    p = argparse.ArgumentParser(description="Bytes read per epoch / data size, by readers and sources.")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="one epoch (the measured command)")
    r.add_argument("--loader", choices=["lightning_stream", "plain"], required=True)
    r.add_argument("--source", choices=SOURCES, required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--devices", type=int, default=1)
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--buffer-size", type=int, default=1000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=None, help="rows per file (4 files; default 5000, 2500 with --quick)")
    p.add_argument("--quick", action="store_true", help="readers 1x0 and 2x2 only, 2500 rows per file")
    p.add_argument("--text-bytes", type=int, default=1000, help="letters per row (default 1000: ~5 MB files)")
    p.add_argument("--buffer-size", type=int, default=1000)
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    p.add_argument("--loaders", nargs="+", choices=["lightning_stream", "plain"], default=["lightning_stream", "plain"])
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.add_argument("--keep", default=None, help="build the data and keep the run logs in this directory")
    a = p.parse_args()
    if a.cmd == "run":
        if a.loader == "plain":
            run_plain_rank(a) if a.rank is not None else run_plain(a)
        else:
            run_lightning(a)
        return

    if readcount.find_strace() is None:
        raise SystemExit("strace is needed (apt-get install strace) and ptrace must be permitted")
    rows = a.rows or (2500 if a.quick else 5000)
    readers = ((1, 0), (2, 2)) if a.quick else READERS
    root = a.keep or tempfile.mkdtemp(prefix="io-bench-")
    data = os.path.join(root, "data")
    t0 = time.perf_counter()
    make_data(data, rows=rows, text_bytes=a.text_bytes)
    where = _where_lightning_stream()
    results = {}
    for source in a.sources:
        for loader in a.loaders:
            for devices, workers in readers:
                res = measure(
                    loader,
                    source,
                    data,
                    devices=devices,
                    workers=workers,
                    buffer_size=a.buffer_size,
                    out=os.path.join(root, "runs", f"{loader}-{source}-{devices}x{workers}"),
                )
                seen = sorted(i for b in res["batches"] for i in b)
                print(
                    f"{loader:>16} {source:>7} {devices}x{workers}: {res['ratio']:.2f}x ({res['read']:,} / {res['size']:,} B, "
                    f"{res['how']}), {len(seen):,} rows in {len(res['batches'])} batches, {res['seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                results[(loader, source, devices, workers)] = res
    lines = [
        f"lightning_stream from `{os.path.dirname(where)}`; 4 files x {rows:,} rows (id + {a.text_bytes} letters), "
        f"parquet row groups of {ROW_GROUP}, batch 32, buffer_size {a.buffer_size}, shuffle on, one epoch; "
        f"{os.cpu_count()} CPU cores; {time.perf_counter() - t0:.0f} s in all.",
        "",
        "| source | loader | data (MB) | "
        + " | ".join(f"{d}x{w}{' DDP' if d > 1 else ''}" for d, w in readers)
        + " | counted by |",
        "|---|---|---|" + "---|" * len(readers) + "---|",
    ]
    for source in a.sources:
        for loader in a.loaders:
            cells = [results[(loader, source, d, w)] for d, w in readers]
            name = "plain recipe" if loader == "plain" else loader
            how = "read_bytes from storage (mmap)" if source == "arrow" else "strace, bytes returned by read calls"
            lines.append(
                f"| {source} | {name} | {cells[0]['size'] / 1e6:.2f} | "
                + " | ".join(f"{c['ratio']:.2f}x" for c in cells)
                + f" | {how} |"
            )
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
