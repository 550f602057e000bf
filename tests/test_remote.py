"""Remote parquet over HTTP (fsspec): each row group crosses the wire for the one reader that owns it."""

import importlib.util
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_stream import Remote, Source, StreamingDataModule
from lightning_stream.testing import assert_resume_equivalent

# benchmarks/rangeserver.py, loaded by path: putting benchmarks/ on sys.path would let its io.py shadow the stdlib's.
_SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "rangeserver.py")
_spec = importlib.util.spec_from_file_location("lightning_stream_rangeserver", _SERVER)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
RangeServer = _module.RangeServer

FILES, ROWS, GROUP = 4, 5000, 100


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("remote"))
    for i in range(FILES):
        ids = list(range(i * ROWS, (i + 1) * ROWS))
        pq.write_table(pa.table({"id": ids, "text": [f"{j:06d} " + "x" * 300 for j in ids]}), os.path.join(root, f"part-{i}.parquet"), row_group_size=GROUP)
    with RangeServer(root) as server:
        yield server, root


def test_each_row_group_is_fetched_once_by_its_reader(served):
    server, root = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    server.sent.clear()
    server.requests.clear()
    dm = StreamingDataModule(train=Source(path="parquet", data_files=urls), batch_size=32, num_workers=2, buffer_size=500, seed=1)
    ids = [i for batch in dm.train_dataloader() for i in batch["id"].tolist()]
    dm.teardown("fit")
    assert sorted(ids) == list(range(FILES * ROWS))
    # One range request per row group (read by the worker that owns its lane) and one per footer
    # (read once, in the main process: the workers are handed the parsed footers). The 2 lanes
    # share at most the row group where they meet, and the last rows of each lane (the tail)
    # are read by whichever reader makes the last batch: a few row groups at most.
    lanes = 2
    extra = sum(server.requests.values()) - (FILES * (ROWS // GROUP) + FILES)
    assert 0 <= extra <= 3 * lanes
    size = sum(os.path.getsize(os.path.join(root, f"part-{i}.parquet")) for i in range(FILES))
    sent = sum(server.sent.values())
    assert sent <= 1.2 * size, f"{sent:,} B crossed the wire for {size:,} B of files ({sent / size:.2f}x)"


def remote_files(root):
    return [name for name in sorted(os.listdir(root)) if name.endswith(".parquet")]


def test_transient_failures_and_latency_every_row_exactly_once(served):
    """50 ms per request and 2% of answers a 503: the reads are retried, and the epoch is whole."""
    _, root = served
    with RangeServer(root, latency=0.05, fail_rate=0.02, seed=3) as flaky:
        urls = [f"{flaky.url}/{name}" for name in remote_files(root)]
        src = Source(path="parquet", data_files=urls, remote=Remote(backoff=0.05))
        dm = StreamingDataModule(train=src, batch_size=32, num_workers=2, buffer_size=500, seed=2)
        ids = [i for batch in dm.train_dataloader() for i in batch["id"].tolist()]
        dm.teardown("fit")
        assert sum(flaky.failures.values()) > 0  # the failures did happen, and were ridden over
    assert sorted(ids) == list(range(FILES * ROWS))


def test_resume_over_http_is_exact(served, tmp_path):
    server, _ = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]

    def make():
        return StreamingDataModule(train=Source(path="parquet", data_files=urls), batch_size=64, num_workers=2, buffer_size=500, seed=4)

    report = assert_resume_equivalent(make, stop_at_step=150, tmp_path=str(tmp_path), max_epochs=2)
    assert len(report.after_resume) == 2 * (FILES * ROWS // 64 + 1) - 150


def test_a_missing_file_fails_at_once_naming_its_url(served):
    server, _ = served
    url = f"{server.url}/no-such-file.parquet"
    began = time.monotonic()
    with pytest.raises(ValueError, match="no-such-file.parquet"):
        StreamingDataModule(train=Source(path="parquet", data_files=[url])).train_dataloader()
    assert time.monotonic() - began < 5


def test_a_server_that_never_answers_fails_in_bounded_time_naming_its_url(tmp_path):
    pq.write_table(pa.table({"id": [1, 2, 3]}), str(tmp_path / "a.parquet"))
    with RangeServer(str(tmp_path), silent=True) as silent:
        url = f"{silent.url}/a.parquet"
        src = Source(path="parquet", data_files=[url], remote=Remote(timeout=1, retries=2, backoff=0.1))
        began = time.monotonic()
        with pytest.raises(ValueError, match="a.parquet.*after 2 tries"):
            StreamingDataModule(train=src).train_dataloader()
        assert time.monotonic() - began < 10
