"""The worker runtime's rooms on their own: the pass channel, the progress record, the plans,
decoding, and the tally (each also runs inside every loader test of the suite)."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pytest

from lightning_stream import Source
from lightning_stream.decode import Rows, decode
from lightning_stream.plans import Reader, plan
from lightning_stream.progress import EpochProgress, PassChannel, PassStart
from lightning_stream.split import Layout
from lightning_stream.stores import open_store
from lightning_stream.tally import EmptyEpochError, EpochTally, RowError, transform_rows
from lightning_stream.transforms import TransformError
from lightning_stream.wire import BatchHeader


def test_pass_channel_carries_a_pass_start_to_a_pickled_copy_that_shares_its_memory() -> None:
    channel = PassChannel(lanes=3)
    copy = pickle.loads(pickle.dumps(channel))  # what a worker gets (spawn pickles; fork shares)
    start = PassStart(epoch=4, start=96, lanes=3, anchors=((1, 20), (0, 0), (2, 7)))
    channel.write(start)
    assert channel.read() == start
    channel.write(PassStart(epoch=5, start=0, lanes=3))  # a later pass without anchors
    assert channel.read() == PassStart(epoch=5, start=0, lanes=3)
    assert copy.capacity == 3
    with pytest.raises(ValueError, match="4 lane anchors"):
        channel.write(PassStart(lanes=4, anchors=((0, 0),) * 4))
    channel.fit(4)
    channel.write(PassStart(lanes=4, anchors=((0, 0),) * 4))
    assert channel.read().anchors == ((0, 0),) * 4


def test_progress_counts_trained_steps_not_yielded_ones() -> None:
    progress = EpochProgress(epoch=2, start=64, steps_before=4, anchors=[[0, 0], [0, 0]])
    progress.yielded(0, (1, 3, 40))
    progress.yielded(1, None)  # Lightning's prefetched batch
    assert progress.steps == 0 and progress.resumed
    progress.ack()
    assert progress.steps == 1 and progress.total_steps == 5
    assert progress.anchors == [[0, 0], [3, 40]]  # anchors only grow
    progress.trained(1, (1, 2, 10))
    assert progress.anchors == [[0, 0], [3, 40]] and progress.steps == 2


@pytest.fixture()
def parquet_store(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(103))}), os.path.join(tmp_path, "a.parquet"), row_group_size=10)
    return open_store(Source(path="parquet", data_files=str(tmp_path / "a.parquet")))


@pytest.mark.parametrize("num_workers", [1, 3])
def test_random_access_plans_of_all_workers_hold_every_row_once(parquet_store, num_workers) -> None:
    options = SimpleNamespace(batch_size=8, shuffle=True, seed=3, window=20, drop_last=False, in_order=False)
    seen, steps = [], []
    for worker in range(num_workers):
        layout_of = lambda at: Layout(parquet_store.num_rows, at.start, 8, 1, False)  # noqa: E731
        for planned in plan(parquet_store, options, layout_of, PassStart(epoch=1), Reader(0, 1, worker, num_workers)):
            seen.extend(planned.rows.table.column("id").to_pylist())
            steps.append(planned.step)
    assert sorted(seen) == list(range(103)) and sorted(steps) == list(range(13))


def test_a_resumed_plan_starts_at_its_position(parquet_store) -> None:
    options = SimpleNamespace(batch_size=8, shuffle=False, seed=0, window=20, drop_last=False, in_order=False)
    layout_of = lambda at: Layout(parquet_store.num_rows, at.start, 8, 1, False)  # noqa: E731
    planned = list(plan(parquet_store, options, layout_of, PassStart(epoch=0, start=96), Reader()))
    assert [p.rows.table.column("id").to_pylist() for p in planned] == [list(range(96, 103))]


def test_decode_gives_features_in_order_and_decodes_images() -> None:
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64")})
    image = Image.new("RGB", (4, 3), (255, 0, 0))
    table = datasets.Dataset.from_dict({"n": [1, 2], "image": [image, image]}, features=features).data.table
    batch = decode(Rows.of(table), features)
    assert list(batch) == ["image", "n"] and batch["n"] == [1, 2] and batch["image"][0].size == (4, 3)
    numpy = decode(Rows.of(table), features, "numpy")
    assert isinstance(numpy["n"], np.ndarray)


def test_transform_rows_names_the_bad_row_or_skips_it_and_blames_no_row_for_a_broken_function() -> None:
    rows = Rows.of(pa.table({"x": [1, 2, 3]}))

    def fails_on_two(batch):
        if 2 in batch["x"]:
            raise ValueError("two")
        return batch

    describe = lambda i: f"file.parquet row {i}"  # noqa: E731
    with pytest.raises(RowError, match=r"bad row in file.parquet row 1: ValueError: two"):
        transform_rows(rows, lambda r: fails_on_two(decode(r, {})), describe, "raise")
    out, skipped = transform_rows(rows, lambda r: fails_on_two(decode(r, {})), describe, "skip")
    assert out == {"x": [1, 3]} and skipped == ["file.parquet row 1: ValueError: two"]

    def broken(batch):
        raise TransformError("returns nothing")

    with pytest.raises(
        TransformError, match=r"returns nothing \(seen on the batch that begins at file.parquet row 0\)"
    ):
        transform_rows(rows, broken, describe, "skip")


def test_tally_caps_skips_and_refuses_an_epoch_that_trains_on_nothing() -> None:
    tally = EpochTally("data.parquet", epoch=3, max_skipped=2, filters=["keep_long"])
    tally.add(BatchHeader(step=0, rows_read=4, rows_out=3, skipped=["row 1: ValueError"]))
    assert tally.filtered == 0 and tally.skipped == 1
    with pytest.raises(RuntimeError, match="skipped 3 bad rows in this epoch, more than max_skipped=2"):
        tally.add(BatchHeader(step=1, rows_read=4, rows_out=2, skipped=["row 5: x", "row 6: y"]))
    empty = EpochTally("data.parquet", epoch=3, length=2, filters=["keep_long"])
    empty.add(BatchHeader(step=0, rows_read=8, rows_out=0))
    with pytest.raises(
        EmptyEpochError, match=r"epoch 3 of data.parquet trained 0 steps where len\(\) said 2.*keep_long"
    ):
        empty.finished()
    resumed = EpochTally("data.parquet", resumed=True)
    resumed.add(BatchHeader(step=0, rows_read=8, rows_out=0))
    resumed.finished()  # what is left of a resumed epoch may be emptied by a selective filter
