"""Row groups larger than the shuffle window are decoded about once an epoch, not once a batch.

Files written with large row groups (pyarrow's default is a million rows; exports of a few
thousand image rows are common) against a ``buffer_size`` of 1000: a window's rows then lie in
two row groups. The decoded-row-group cache held two windows' *rows*, which is one such row group,
so batches that alternate between the two re-read and re-decoded them: 45x the file's bytes in an
epoch of 1600-row groups. The bytes read are counted by the kernel (``rchar`` of
``/proc/self/io``: every byte a read call returned, page cache included), in a 0-worker loader so
that the reads are this process's.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_stream import Source, StreamingDataModule

ROWS, GROUP, BUFFER = 9600, 1600, 1000


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.fixture(scope="module")
def big_groups(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("groups") / "big-groups.parquet")
    rng = np.random.default_rng(0)
    text = [rng.integers(97, 123, 500, dtype=np.uint8).tobytes().decode() for _ in range(ROWS)]  # incompressible
    pq.write_table(pa.table({"id": np.arange(ROWS), "text": text}), path, row_group_size=GROUP)
    return path


@pytest.mark.parametrize("lanes", [None, 3], ids=["one-window", "three-lanes"])
def test_row_groups_larger_than_the_window_are_read_about_once(big_groups, lanes):
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=big_groups),
        batch_size=32,
        num_workers=0,
        shuffle=True,
        buffer_size=BUFFER,
        lanes=lanes,
        seed=0,
    )
    loader = dm.train_dataloader()
    before = rchar()
    ids = np.concatenate([batch["id"].numpy() for batch in loader])
    read = rchar() - before
    assert sorted(ids.tolist()) == list(range(ROWS))
    size = os.path.getsize(big_groups)
    assert read <= 1.5 * size, (
        f"an epoch read {read / size:.1f}x the file ({read:,} of {size:,} B): row groups decoded again and again"
    )
