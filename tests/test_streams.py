"""Sources without random access (csv, webdataset tars, a parquet repo read by load_dataset(streaming=True)),
and hub-style parquet repos read by row group."""

import gc
import io
import json
import os
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_stream import Source, StreamingDataModule
from lightning_stream.testing import assert_resume_equivalent

N = 1001


@pytest.fixture(scope="module")
def stream_dirs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("streams"))
    os.makedirs(os.path.join(root, "csv"))
    for i, (a, b) in enumerate([(0, 300), (300, N)]):
        with open(os.path.join(root, "csv", f"part-{i}.csv"), "w") as f:
            f.write("id,text\n" + "".join(f"{j},row {j}\n" for j in range(a, b)))
    os.makedirs(os.path.join(root, "wds"))
    for i, (a, b) in enumerate([(0, 500), (500, N)]):
        with tarfile.open(os.path.join(root, "wds", f"shard-{i:05d}.tar"), "w") as tar:
            for j in range(a, b):
                data = json.dumps({"id": j}).encode()
                info = tarfile.TarInfo(f"{j:06d}.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    repo = os.path.join(root, "repo")
    os.makedirs(os.path.join(repo, "data"))
    for i, (a, b) in enumerate([(0, 200), (200, 700), (700, N)]):
        pq.write_table(
            pa.table({"id": list(range(a, b)), "text": [f"row {j}" for j in range(a, b)]}),
            os.path.join(repo, "data", f"train-{i:05d}-of-00003.parquet"),
            row_group_size=64,
        )
    return root


def sources(root):
    return {
        "csv": Source(path="csv", data_files=os.path.join(root, "csv", "*.csv")),
        "webdataset": Source(path="webdataset", data_files=os.path.join(root, "wds", "*.tar")),
        "repo-streaming": Source(path=os.path.join(root, "repo"), streaming=True),
        "repo": Source(path=os.path.join(root, "repo")),
    }


def wds_ids(batch):
    return {"id": [j["id"] for j in batch["json"]]}


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["csv", "webdataset", "repo-streaming", "repo"])
def test_resume_is_exact_without_random_access(tmp_path, stream_dirs, kind, num_workers, shuffle):
    src = sources(stream_dirs)[kind]

    def make():
        transform = wds_ids if kind == "webdataset" else None
        return StreamingDataModule(
            train=src,
            transform=transform,
            batch_size=16,
            num_workers=num_workers,
            shuffle=shuffle,
            buffer_size=100,
            seed=6,
        )

    report = assert_resume_equivalent(
        make, stop_at_step=20, tmp_path=str(tmp_path), max_epochs=2
    )  # 320 rows: past the first window
    for epoch in (0, 1):
        assert sorted(i for e, b in report.uninterrupted if e == epoch for i in b) == list(range(N))


def test_parquet_repo_is_read_by_row_group_with_a_length(stream_dirs):
    loader = StreamingDataModule(train=sources(stream_dirs)["repo"], batch_size=10).train_dataloader()
    assert type(loader.dataset.store).__name__ == "ParquetStore"
    assert len(loader) == 101


def test_shuffled_parquet_stream_does_not_stall(stream_dirs):
    """datasets sleeps 5 s when a shuffled parquet stream ends or is dropped; lightning_stream must not."""
    dm = StreamingDataModule(train=sources(stream_dirs)["repo-streaming"], batch_size=50, buffer_size=100)
    loader = dm.train_dataloader()
    gc.collect()  # loaders other tests left to the collector are not this one's time (torch waits on their workers)
    t = time.perf_counter()
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sum(len(b["id"]) for b in loader) == N
    it = iter(loader)
    next(it)
    del it  # an iterator dropped mid-epoch
    assert time.perf_counter() - t < 3.0


def test_a_stream_resume_reads_from_the_shard_of_the_current_window_not_the_lane_start(tmp_path):
    """8 shards of 250 rows in 2 lanes; resumed near the end of each lane, the loader reads about
    one shard per lane (the shard its window begins in) and the window, not the 1000 rows before."""
    for i in range(8):
        with open(tmp_path / f"part-{i}.jsonl", "w") as f:
            f.write("".join(json.dumps({"id": j, "text": "x" * 500}) + "\n" for j in range(i * 250, (i + 1) * 250)))
    shard_bytes = os.path.getsize(tmp_path / "part-0.jsonl")

    def loader():
        src = Source(path="json", data_files=str(tmp_path / "*.jsonl"))
        return StreamingDataModule(train=src, batch_size=10, buffer_size=100, seed=3, lanes=2).train_dataloader()

    full = [b["id"].tolist() for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it)["id"].tolist() for _ in range(180)]  # 90 batches of each lane: row 900 of 1000
    state = first.state_dict()
    assert state["lanes"] == 2 and [k for k, _ in state["anchors"]] == [
        3,
        3,
    ]  # both windows begin in a lane's 4th shard

    def rchar():
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    resumed = loader()
    resumed.load_state_dict(state)
    before = rchar()
    it = iter(resumed)
    rest = [next(it)["id"].tolist(), next(it)["id"].tolist()]  # one batch of each lane
    read = rchar() - before
    rest += [b["id"].tolist() for b in it]
    assert head + rest == full
    # Re-reading each lane from its start would read ~7 shards.
    assert read <= 2.2 * shard_bytes, f"{read:,} B read to resume (a shard is {shard_bytes:,} B)"
