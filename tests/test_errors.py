"""Bad input gets a clear error that names the culprit, or a counted skip."""

import io
import os
import re
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import epoch_ids
from PIL import Image

from lightning_stream import RowError, Source, StateMismatchError, StreamingDataModule
from lightning_stream.state import STATE_VERSION
from lightning_stream.transforms import TransformError


def first_batch(**kw):
    return next(iter(StreamingDataModule(shuffle=False, **kw).train_dataloader()))


@pytest.fixture(scope="module")
def images_parquet(tmp_path_factory):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, "PNG")
    values = [png.getvalue()] * 10
    values[3] = b"not an image"
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("int64")})
    path = str(tmp_path_factory.mktemp("img") / "images.parquet")
    datasets.Dataset.from_dict({"image": values, "id": list(range(10))}, features=features).to_parquet(path)
    return path


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file matches .*missing-\*\.parquet"):
        first_batch(train=Source(path="parquet", data_files=str(tmp_path / "missing-*.parquet")))


def test_empty_and_truncated_parquet(tmp_path, data_dir):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read parquet file .*empty.parquet"):
        first_batch(train=str(empty))
    good = open(os.path.join(data_dir, "one.parquet"), "rb").read()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot read parquet file .*cut.parquet"):
        first_batch(train=str(cut))


def test_missing_column_in_transform_names_function_and_column(data_dir):
    # A column no row has is the transform's bug, not a bad row (nor one to skip).
    with pytest.raises(
        TransformError,
        match=r"transform test_errors\..*<lambda> \(test_errors.py:\d+\) reads column 'txt', which the batch does not have",
    ):
        first_batch(train=os.path.join(data_dir, "one.parquet"), transform=lambda b: {"n": [len(t) for t in b["txt"]]})


def test_missing_column_in_source(data_dir):
    with pytest.raises(KeyError, match=r"column\(s\) \['nope'\] not found"):
        first_batch(train=Source(path="parquet", data_files=os.path.join(data_dir, "one.parquet"), columns=["nope"]))


def test_transform_with_unequal_columns(data_dir):
    with pytest.raises(TransformError, match="unequal length"):
        first_batch(train=os.path.join(data_dir, "one.parquet"), transform=lambda b: {"x": [1, 2, 3]})


def test_ragged_numeric_column_names_it(data_dir):
    with pytest.raises(ValueError, match="column 'tokens' is ragged"):
        first_batch(
            train=os.path.join(data_dir, "one.parquet"),
            transform=lambda b: {"tokens": [[1] * (i % 3 + 1) for i in b["id"]]},
        )


def test_corrupt_image_raises_with_file_row_and_column(images_parquet):
    with pytest.raises(RowError, match=r"images.parquet row 3: ValueError: column 'image': cannot decode"):
        first_batch(train=images_parquet, batch_size=5)


def test_corrupt_image_skipped_and_counted(images_parquet):
    loader = StreamingDataModule(train=images_parquet, batch_size=5, shuffle=False, on_error="skip").train_dataloader()
    assert epoch_ids(loader) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert loader.stats.skipped == 1 and "images.parquet row 3" in loader.stats.culprits[0]


def test_flood_of_bad_rows_stops_at_max_skipped(data_dir):
    def bad(batch):
        if any(i % 2 for i in batch["id"]):
            raise ValueError("odd id")
        return batch

    loader = StreamingDataModule(
        train=os.path.join(data_dir, "one.parquet"), transform=bad, batch_size=10, on_error="skip", max_skipped=0.1
    ).train_dataloader()
    with pytest.raises(RuntimeError, match="more than max_skipped=0.1"):
        list(loader)


def test_too_few_rows_for_the_batch_layout(tmp_path):
    path = tmp_path / "three.parquet"
    pq.write_table(pa.table({"id": [0, 1, 2]}), path)
    assert len(StreamingDataModule(train=str(path), batch_size=8).train_dataloader()) == 1
    with pytest.raises(ValueError, match="1 evaluation rows cannot be split over 2 ranks"):
        from lightning_stream.split import EvalLayout

        EvalLayout(1, 4, 2)


def test_more_workers_than_batches_warns(data_dir):
    with pytest.warns(UserWarning, match="num_workers=4 but .* makes only 1 batches"):
        StreamingDataModule(
            train=os.path.join(data_dir, "one.parquet"), batch_size=1000, num_workers=4
        ).train_dataloader()


def test_state_from_newer_version_or_other_shuffle_is_refused(data_dir):
    dm = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=10)
    state = dm.train_dataloader().state_dict()
    with pytest.raises(StateMismatchError, match="newer than this lightning_stream"):
        dm.train_dataloader().load_state_dict({**state, "version": STATE_VERSION + 1})
    other = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=10, shuffle=False).train_dataloader()
    with pytest.raises(StateMismatchError, match="shuffle setting"):
        other.load_state_dict(state)
    other.load_state_dict({**state, "position": 500}, strict=False)  # the explicit override
    assert next(iter(other))["id"].tolist() == list(range(500, 510))


def test_invalid_arguments():
    for kw in ({"batch_size": 0}, {"num_workers": -1}, {"buffer_size": 0}, {"on_error": "ignore"}, {"even": "cut"}):
        with pytest.raises(ValueError):
            StreamingDataModule(train="x.parquet", **kw)


_KILLED_WORKER = """
import os, signal, sys
from lightning_stream import StreamingDataModule

def die_at_500(batch):
    if 500 in batch["id"]:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return batch

loader = StreamingDataModule(train=sys.argv[1], transform=die_at_500, batch_size=10, num_workers=2, shuffle=False).train_dataloader()
for _ in loader:
    pass
"""


def test_killed_worker_is_an_error_not_a_hang(data_dir):
    # In a child process: torch reports a dead worker from a SIGCHLD handler, which must not fire inside pytest.
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, os.path.join(data_dir, "disk")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert re.search(r"a DataLoader worker reading .*disk died .*out-of-memory killer", proc.stderr)


def test_missing_column_in_collate_names_it(data_dir):
    with pytest.raises(KeyError, match=r"collate_fn .*column 'input_ids' not found"):
        first_batch(train=os.path.join(data_dir, "one.parquet"), collate_fn=lambda rows: [r["input_ids"] for r in rows])
