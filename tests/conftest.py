"""Small datasets built on the fly: a save_to_disk folder and parquet files of unequal sizes."""

from __future__ import annotations

import logging
import os
import warnings

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
datasets.disable_progress_bars()
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*litlogger.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def rows(start: int, stop: int) -> dict:
    return {"id": list(range(start, stop)), "text": [f"row {i}" for i in range(start, stop)]}


def write_parquet(path: str, start: int, stop: int, row_group_size: int = 64) -> None:
    pq.write_table(pa.table(rows(start, stop)), path, row_group_size=row_group_size)


PARQUET_SIZES = (100, 350, 50, 500)  # unequal on purpose


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("data"))
    datasets.Dataset.from_dict(rows(0, 1000)).save_to_disk(os.path.join(root, "disk"), num_shards=3)
    os.makedirs(os.path.join(root, "pq"))
    start = 0
    for i, n in enumerate(PARQUET_SIZES):
        write_parquet(os.path.join(root, "pq", f"train-{i:05d}.parquet"), start, start + n)
        start += n
    write_parquet(os.path.join(root, "one.parquet"), 0, 1000, row_group_size=100)
    return root


@pytest.fixture(params=["disk", "parquet"])
def source(request, data_dir):
    from lightning_stream import Source

    if request.param == "disk":
        return os.path.join(data_dir, "disk")
    return Source(path="parquet", data_files=os.path.join(data_dir, "pq", "train-*.parquet"))


@pytest.fixture(scope="session")
def uneven_dir(tmp_path_factory) -> str:
    """1001 rows as one file, and as 3 files of very different sizes."""
    root = str(tmp_path_factory.mktemp("uneven"))
    write_parquet(os.path.join(root, "odd.parquet"), 0, 1001, row_group_size=100)
    os.makedirs(os.path.join(root, "three"))
    for i, (a, b) in enumerate([(0, 900), (900, 960), (960, 1001)]):
        write_parquet(os.path.join(root, "three", f"part-{i}.parquet"), a, b, row_group_size=50)
    return root


@pytest.fixture(scope="session")
def jsonl_dir(tmp_path_factory) -> str:
    """1001 rows as two gzipped JSON-lines files: a source with no random access."""
    import gzip
    import json

    root = str(tmp_path_factory.mktemp("jsonl"))
    for i, (a, b) in enumerate([(0, 400), (400, 1001)]):
        with gzip.open(os.path.join(root, f"part-{i}.jsonl.gz"), "wt") as f:
            for j in range(a, b):
                f.write(json.dumps({"id": j, "text": f"row {j}"}) + "\n")
    return root
