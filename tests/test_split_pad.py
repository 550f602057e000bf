"""``even="pad"``: every rank takes the same number of steps and no row is dropped.

The rule (``split.Layout``): the rows left after the last full step are split over the ranks when
there are at least ``world_size`` of them (no padding, no drop, ``pad`` or not). When fewer are left
(``0 < rest < world_size``), ``even="drop"`` (the default) drops them, and ``even="pad"`` adds one
more step of one row per rank: the ranks past the last real row get a copy of the epoch's first
rows (positions past the end wrap around), so ``world_size - rest`` rows, at most
``world_size - 1``, are seen twice. ``drop_last`` drops the whole partial step, padding or not.
"""

import collections
import itertools
import os

import pytest
from conftest import write_parquet
from helpers import epoch_ids

from lightning_stream import StreamingDataModule
from lightning_stream.split import Layout


def positions(lay: Layout, rank: int) -> list[list[int]]:
    return [list(range(*lay.batch_range(step, rank))) for step in range(lay.num_steps)]


def leftover(num_rows: int, start: int, batch: int, world: int) -> int:
    return (num_rows - start) % (batch * world)


# (num_rows, start, batch_size, world_size): leftover rows fewer than the ranks, as many or more, none
CASES = [
    (1001, 0, 10, 2),  # 1 left over on 2 ranks: 1 padded
    (1003, 0, 10, 4),  # 3 left over on 4 ranks: 1 padded
    (1001, 0, 10, 4),  # 1 left over on 4 ranks: 3 padded, the most (world_size - 1)
    (9, 0, 1, 8),  # 1 left over on 8 ranks: 7 padded
    (3, 0, 4, 4),  # not one full step: every rank's only batch is its one row
    (1002, 41, 10, 4),  # resumed at 41: 1 left over, the copies wrap to the epoch's positions 0, 1, 2
    (1201, 37, 8, 3),  # 12 left over on 3 ranks: split, nothing padded
    (5, 0, 4, 4),  # 5 left over on 4 ranks: split, nothing padded
    (1000, 0, 10, 2),  # divides: nothing left over
]


@pytest.mark.parametrize("num_rows,start,batch,world", CASES)
def test_pad_layout_gives_every_rank_the_same_steps_and_repeats_only_the_copies(num_rows, start, batch, world):
    lay = Layout(num_rows, start, batch, world, pad=True)
    rest = leftover(num_rows, start, batch, world)
    padded = world - rest if 0 < rest < world else 0
    assert lay.padded_rows == padded <= world - 1
    assert lay.dropped_rows == 0
    per_rank = [positions(lay, rank) for rank in range(world)]
    assert all(len(batches) == lay.num_steps for batches in per_rank)  # the same step count on every rank
    assert all(batch_ for batches in per_rank for batch_ in batches)  # and no empty batch on any rank
    seen = list(itertools.chain.from_iterable(itertools.chain.from_iterable(per_rank)))
    real = [p for p in seen if p < num_rows]
    copies = [p for p in seen if p >= num_rows]
    assert sorted(real) == list(range(start, num_rows))  # every row of the epoch, once
    # The copies: the positions just past the end, which the reader wraps to the epoch's first rows.
    assert sorted(copies) == list(range(num_rows, num_rows + padded))
    assert sorted(p % num_rows for p in copies) == list(range(padded))
    if padded:  # one more step than "drop", of one row per rank
        assert [len(batches[-1]) for batches in per_rank] == [1] * world


@pytest.mark.parametrize("num_rows,start,batch,world", CASES)
def test_drop_layout_drops_what_pad_completes_and_is_the_same_before(num_rows, start, batch, world):
    pad = Layout(num_rows, start, batch, world, pad=True)
    drop = Layout(num_rows, start, batch, world)
    rest = leftover(num_rows, start, batch, world)
    if 0 < rest < world:
        assert drop.dropped_rows == rest and drop.padded_rows == 0
        assert drop.num_steps == pad.num_steps - 1
    else:  # nothing to pad: the two are one layout
        assert drop.dropped_rows == 0 and drop.num_steps == pad.num_steps
    for rank in range(world):
        assert positions(drop, rank) == positions(pad, rank)[: drop.num_steps]


def test_drop_last_drops_the_partial_step_with_or_without_pad():
    for num_rows in (1001, 1011):  # fewer rows left over than ranks, and more
        lay = Layout(num_rows, 0, 10, 2, drop_last=True, pad=True)
        assert lay.num_steps == 50 and lay.padded_rows == 0 and lay.dropped_rows == num_rows - 1000


# -- end to end: the loaders of each rank of a 2-rank (and a 4-rank) run, made in this process ------------
@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("pad"))
    # At batch size 10: 1 row left over on 2 or 4 ranks (padded or dropped), and 3 on 2 ranks (split).
    write_parquet(os.path.join(root, "41.parquet"), 0, 41, row_group_size=8)
    write_parquet(os.path.join(root, "43.parquet"), 0, 43, row_group_size=8)
    return root


def rank_loaders(path: str, world_size: int, **kw) -> list:
    """The train loader of every rank of a ``world_size``-rank run: the datamodule is told its rank
    as a Trainer under DDP would, so ``even=`` goes through the same path."""
    loaders = []
    for rank in range(world_size):
        dm = StreamingDataModule(train=path, batch_size=10, seed=3, **kw)
        dm._topology = lambda rank=rank: (rank, world_size)
        loaders.append(dm.train_dataloader())
    return loaders


@pytest.mark.parametrize(
    "world_size,num_workers,shuffle", [(2, 0, False), (2, 0, True), (2, 2, True), (4, 0, True)], ids=str
)
def test_pad_through_the_rank_loaders(parquet_dir, world_size, num_workers, shuffle):
    path = os.path.join(parquet_dir, "41.parquet")
    kw = {"num_workers": num_workers, "shuffle": shuffle}
    loaders = rank_loaders(path, world_size, even="pad", **kw)
    steps = 40 // (10 * world_size) + 1  # the full steps, and one of a row per rank
    assert [len(loader) for loader in loaders] == [steps] * world_size
    per_rank = [epoch_ids(loader, per_batch=True) for loader in loaders]
    assert [len(batches) for batches in per_rank] == [steps] * world_size  # what len() said, on every rank
    assert all(len(batches[-1]) == 1 for batches in per_rank)
    counts = collections.Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(counts) == set(range(41))  # every row
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert len(twice) == world_size - 1 and all(counts[i] == 2 for i in twice)  # only the copies, once each
    # Rank 0 has the last real row; ranks 1.. have copies of the epoch's first rows: rank 0's first ones.
    assert [per_rank[r][-1][0] for r in range(1, world_size)] == per_rank[0][0][: world_size - 1]
    assert all(loader.epoch_dropped_rows == 0 for loader in loaders)
    # "drop" (the default) makes the same steps but the last: the one row left over is seen by no rank.
    for drop in (rank_loaders(path, world_size, even="drop", **kw), rank_loaders(path, world_size, **kw)):
        dropped = [epoch_ids(loader, per_batch=True) for loader in drop]
        assert dropped == [batches[:-1] for batches in per_rank]
        assert [len(loader) for loader in drop] == [steps - 1] * world_size
        assert all(loader.epoch_dropped_rows == 1 for loader in drop)
        assert sorted(i for batches in dropped for batch in batches for i in batch) == sorted(
            set(range(41)) - {per_rank[0][-1][0]}
        )


def test_pad_changes_nothing_when_every_rank_has_a_leftover_row(parquet_dir):
    path = os.path.join(parquet_dir, "43.parquet")
    pad = [epoch_ids(loader, per_batch=True) for loader in rank_loaders(path, 2, even="pad")]
    drop = [epoch_ids(loader, per_batch=True) for loader in rank_loaders(path, 2, even="drop")]
    assert pad == drop
    assert [len(batches) for batches in pad] == [3, 3] and [len(pad[0][-1]), len(pad[1][-1])] == [2, 1]
    assert sorted(i for batches in pad for batch in batches for i in batch) == list(range(43))  # each row once
