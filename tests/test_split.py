import itertools

import pytest

from lightning_stream.split import Layout


@pytest.mark.parametrize(
    "num_rows,start,batch,world,drop_last",
    [
        (1000, 0, 16, 1, False),
        (1001, 0, 10, 2, False),
        (1001, 0, 10, 2, True),
        (1201, 37, 8, 3, False),
        (5, 0, 4, 4, False),
        (7, 0, 2, 8, False),
    ],
)
def test_every_rank_same_steps_disjoint_and_bounded_drop(num_rows, start, batch, world, drop_last):
    lay = Layout(num_rows, start, batch, world, drop_last)
    seen = []
    for rank in range(world):
        ranges = [lay.batch_range(s, rank) for s in range(lay.num_steps)]
        assert all(b > a for a, b in ranges)  # no empty batch on any rank
        seen.extend(itertools.chain.from_iterable(range(a, b) for a, b in ranges))
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(start, num_rows))
    assert lay.dropped_rows == num_rows - start - len(seen)
    bound = world * batch - 1 if drop_last else world - 1
    assert lay.dropped_rows <= bound


def test_position_after_steps():
    lay = Layout(100, 10, 8, 2)
    assert lay.position_after(0) == 10
    assert lay.position_after(2) == 42
    assert lay.position_after(lay.num_steps) == 100


def test_resume_layout_continues_the_same_positions():
    full = Layout(1000, 0, 16, 2)
    rest = Layout(1000, full.position_after(7), 16, 2)
    assert [rest.batch_range(s, r) for s in range(rest.num_steps) for r in (0, 1)] == [
        full.batch_range(s, r) for s in range(7, full.num_steps) for r in (0, 1)
    ]


def test_bad_arguments():
    with pytest.raises(ValueError):
        Layout(10, 11, 2)
    with pytest.raises(ValueError):
        Layout(10, 0, 0)


@pytest.mark.parametrize(
    "num_rows,batch,world,workers", [(1001, 10, 2, 3), (64, 8, 1, 2), (997, 16, 4, 4), (50, 10, 1, 8)]
)
def test_evaluation_splits_each_rank_run_over_workers_in_contiguous_pieces(num_rows, batch, world, workers):
    from lightning_stream.split import EvalLayout

    lay = EvalLayout(num_rows, batch, world)
    seen = []
    for rank in range(world):
        for worker in range(workers):
            ranges = [lay.batch_range(s, rank, workers) for s in range(worker, lay.num_steps, workers)]
            for (_, b), (c, _) in zip(ranges, ranges[1:]):
                assert b == c  # a worker's batches follow each other: it reads its piece once
            seen.extend(i for a, b in ranges for i in range(a, b))
        sizes = [
            lay.batch_range(s, rank, workers)[1] - lay.batch_range(s, rank, workers)[0] for s in range(lay.num_steps)
        ]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sorted(seen) == list(range(num_rows))
