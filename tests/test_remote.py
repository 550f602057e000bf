"""Remote parquet over HTTP (fsspec): each row group crosses the wire for the one reader that owns it."""

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_stream import Source, StreamingDataModule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rangeserver import RangeServer  # noqa: E402

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
