"""Read volume under real DDP: each block of the data is read by one reader, not by all of them.

One epoch through ``Trainer(strategy="ddp", devices=2)`` on gloo, ``num_workers=2``, shuffle on,
runs under ``strace -f`` (``benchmarks/readcount.py``): the bytes that read calls return from the
data files, summed over the ranks, the workers and their threads, must stay within 1.3x the files'
size (footers and metadata included). 4 readers that each decode every row group of every
window read ~4x.

Files of ~5 MB (5000 rows of ~1 KB, parquet row groups of 100 rows, 200 groups in all): pyarrow
reads the last 64 KiB of a parquet file at every open, and each rank's main process and each
worker opens every file, so with 1-MB files the footers alone would be ~35 % whatever the order.
jsonl has a fixed cost that no file size hides: ``load_dataset("json", streaming=True)`` reads
the first 10 MB of the first file (here the whole first shard, 0.25x) to infer the features, in
every process that calls it; a 1-process run reads 1.25x. The failure message lists the bytes of
each traced process or thread, in data sizes, to tell such reads from the epoch's.
"""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "io.py")
_spec = importlib.util.spec_from_file_location("lightning_stream_io_bench", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

ROWS, BATCH, BUFFER = 5000, 32, 1000
MAX_RATIO = 1.3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if bench.readcount.find_strace() is None:
        pytest.skip(
            "strace not found or ptrace not permitted: the read volume is counted with `strace -f` (apt-get install strace)"
        )
    root = tmp_path_factory.mktemp("io")
    data = str(root / "data")
    bench.make_data(data, rows=ROWS, text_bytes=1000, kinds=("parquet", "jsonl"))
    cache = {}

    def run(source, devices, workers):
        key = (source, devices, workers)
        if key not in cache:
            cache[key] = bench.measure(
                "lightning_stream",
                source,
                data,
                devices=devices,
                workers=workers,
                batch_size=BATCH,
                buffer_size=BUFFER,
                timeout=240,
                out=str(root / f"{source}-{devices}x{workers}"),
            )
        return cache[key]

    return run


def _check_epoch(res):
    ids = [i for b in res["batches"] for i in b]
    assert len(ids) == len(set(ids)), "a row was read twice in the epoch"
    assert 4 * ROWS - len(ids) <= 1, f"{4 * ROWS - len(ids)} rows missing from the epoch"


def _report(res):
    tasks = ", ".join(f"{n / res['size']:.2f}" for n in res["per_task"] if n)
    return (
        f"{res['source']} {res['devices']} ranks x {res['workers']} workers read {res['read']:,} B of data files = "
        f"{res['ratio']:.2f}x their {res['size']:,} B (limit {MAX_RATIO}x; lightning_stream from {res['package']}); "
        f"per process or thread, in data sizes: {tasks}"
    )


@pytest.mark.parametrize("source", ["parquet", "jsonl"])
def test_ddp_epoch_reads_the_data_about_once(runs, source):
    res = runs(source, 2, 2)
    _check_epoch(res)
    assert res["ratio"] <= MAX_RATIO, _report(res)


def test_ddp_batches_mix_as_many_row_groups_as_one_reader(runs):
    """Reading each block once must not come from narrower windows: a batch of the 2x2 run draws
    from as many row groups as a batch of a 1-process, 0-worker run with the same buffer_size."""
    ref, ddp = runs("parquet", 1, 0), runs("parquet", 2, 2)
    _check_epoch(ddp)
    want, got = bench.row_groups_per_batch(ref["batches"], BATCH), bench.row_groups_per_batch(ddp["batches"], BATCH)
    assert got >= 0.95 * want, (
        f"distinct row groups per batch of {BATCH}: {got:.2f} under DDP 2x2, {want:.2f} with one reader"
    )
