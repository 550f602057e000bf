import numpy as np
import pytest

from lightning_stream.order import EpochOrder


def epoch_rows(lengths, **kw):
    order = EpochOrder(lengths, **kw)
    return order.rows(np.arange(order.num_rows))


@pytest.mark.parametrize("lengths", [[10] * 7, [1, 30, 5, 64, 2], [100]])
def test_each_epoch_is_a_permutation(lengths):
    for epoch in range(3):
        rows = epoch_rows(lengths, seed=3, epoch=epoch, shuffle=True, window=16)
        assert sorted(rows.tolist()) == list(range(sum(lengths)))


def test_epochs_differ_and_seed_reproduces():
    kw = dict(seed=7, shuffle=True, window=32)
    e0 = epoch_rows([20] * 10, epoch=0, **kw)
    e1 = epoch_rows([20] * 10, epoch=1, **kw)
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, epoch_rows([20] * 10, epoch=0, **kw))
    assert not np.array_equal(e0, epoch_rows([20] * 10, epoch=0, seed=8, shuffle=True, window=32))


def test_no_shuffle_is_source_order():
    assert epoch_rows([3, 4, 5], seed=0, epoch=5, shuffle=False, window=4).tolist() == list(range(12))


def test_window_mixes_rows_across_blocks():
    # Blocks of 10 rows, window 50: each window draws rows from 5 different blocks.
    rows = epoch_rows([10] * 20, seed=1, epoch=0, shuffle=True, window=50)
    for w in range(4):
        blocks = set((rows[w * 50 : (w + 1) * 50] // 10).tolist())
        assert len(blocks) == 5


def test_positions_can_be_asked_out_of_order():
    order = EpochOrder([7] * 9, seed=2, epoch=1, shuffle=True, window=10)
    full = order.rows(np.arange(63))
    again = EpochOrder([7] * 9, seed=2, epoch=1, shuffle=True, window=10)
    assert again.rows(np.array([50, 3, 62])).tolist() == [full[50], full[3], full[62]]
    with pytest.raises(IndexError):
        again.rows(np.array([63]))


# -- lanes ---------------------------------------------------------------------------------------
from lightning_stream.order import Lanes, block_permutation, window_permutation  # noqa: E402


def reference_one_lane(lengths, seed, epoch, window):
    """The order before lanes existed: shuffled blocks, then rows shuffled in windows of the sequence."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seq = np.concatenate(
        [
            np.arange(starts[b], starts[b] + lengths[b])
            for b in block_permutation(len(lengths), seed=seed, epoch=epoch, shuffle=True)
        ]
    )
    out = []
    for w in range(0, len(seq), window):
        part = seq[w : w + window]
        out.extend(part[window_permutation(len(part), seed=seed, epoch=epoch, window_index=w // window)])
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_one_lane_is_the_plain_block_then_window_shuffle_whatever_the_batch_size(batch_size):
    lengths = [13, 40, 7, 100, 21]
    order = EpochOrder(lengths, seed=4, epoch=2, shuffle=True, window=30, lanes=1, batch_size=batch_size)
    assert order.rows(np.arange(order.num_rows)).tolist() == reference_one_lane(lengths, 4, 2, 30)


@pytest.mark.parametrize("lanes,batch_size", [(2, 8), (4, 16), (3, 5), (8, 32), (16, 3)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_lane_count_gives_a_permutation(lanes, batch_size, shuffle):
    lengths = [64] * 9 + [17, 3]
    order = EpochOrder(lengths, seed=1, epoch=3, shuffle=shuffle, window=50, lanes=lanes, batch_size=batch_size)
    assert sorted(order.rows(np.arange(order.num_rows)).tolist()) == list(range(sum(lengths)))


def test_lanes_interleave_by_batch_then_the_tail_follows_lane_after_lane():
    lanes = Lanes([7, 6, 6], batch_size=3)  # two full rounds (18 rows), then a tail of 1 + 0 + 0
    lane, at = lanes.locate(np.arange(19))
    assert lane.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [0] * 3 + [1] * 3 + [2] * 3 + [0]
    assert at.tolist()[:9] == [0, 1, 2] * 3 and at.tolist()[9:18] == [3, 4, 5] * 3 and at[18] == 6


def blocks_per_reader(order, lengths, batch_size, world, workers):
    from lightning_stream.split import Layout

    ends = np.cumsum(lengths)
    layout = Layout(order.num_rows, 0, batch_size, world)
    readers = {}
    for step in range(layout.num_steps):
        for rank in range(world):
            a, b = layout.batch_range(step, rank)
            blocks = np.searchsorted(ends, order.rows(np.arange(a, b)), side="right")
            readers.setdefault((rank, step % workers), set()).update(blocks.tolist())
    return readers


@pytest.mark.parametrize("world,workers", [(1, 4), (2, 2), (4, 2)])
def test_each_block_is_read_by_one_reader_when_lanes_match_the_readers(world, workers):
    lengths = [100] * 200
    lanes, batch_size = world * workers, 32
    order = EpochOrder(lengths, seed=0, epoch=1, shuffle=True, window=1000, lanes=lanes, batch_size=batch_size)
    readers = blocks_per_reader(order, lengths, batch_size, world, workers)
    reads = sum(len(b) for b in readers.values())
    # Lane boundaries cut at most lanes - 1 blocks; the tail (< lanes * (batch + 1) rows) a few more.
    assert reads <= len(lengths) + 2 * lanes, reads
    single = EpochOrder(lengths, seed=0, epoch=1, shuffle=True, window=1000, lanes=1, batch_size=batch_size)
    assert sum(len(b) for b in blocks_per_reader(single, lengths, batch_size, world, workers).values()) > 3 * len(
        lengths
    )


def test_a_batch_still_draws_from_a_whole_window():
    lengths = [10] * 400
    order = EpochOrder(lengths, seed=5, epoch=0, shuffle=True, window=200, lanes=4, batch_size=32)
    first = order.rows(np.arange(32))  # batch 0 of lane 0: 32 rows drawn from its first 200-row window
    assert len(set((first // 10).tolist())) >= 12
