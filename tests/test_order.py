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
        blocks = set((rows[w * 50:(w + 1) * 50] // 10).tolist())
        assert len(blocks) == 5


def test_positions_can_be_asked_out_of_order():
    order = EpochOrder([7] * 9, seed=2, epoch=1, shuffle=True, window=10)
    full = order.rows(np.arange(63))
    again = EpochOrder([7] * 9, seed=2, epoch=1, shuffle=True, window=10)
    assert again.rows(np.array([50, 3, 62])).tolist() == [full[50], full[3], full[62]]
    with pytest.raises(IndexError):
        again.rows(np.array([63]))
