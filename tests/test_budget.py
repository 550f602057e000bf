"""Token-budget steps (batch_tokens): planned before the epoch, every row once, known and even, exact on resume."""

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cpu_trainer

from lightning_stream import Map, Source, StateMismatchError, StreamingDataModule, TokensAndImages
from lightning_stream.budget import Budget, RowTooLongError, pack_window
from lightning_stream.testing import BatchRecorder, assert_resume_equivalent

ROWS = 1200
BUDGET = 512


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """Parquet rows of 8 to 300 tokens (a long tail, as SFT data has) and 0 to 3 images, in 4 files."""
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(7)
    n = np.clip(rng.lognormal(4.3, 0.8, ROWS), 8, 300).astype(np.int64)
    images = rng.integers(0, 4, ROWS)
    for f, a in enumerate(range(0, ROWS, ROWS // 4)):
        sel = slice(a, a + ROWS // 4)
        table = pa.table(
            {
                "id": np.arange(ROWS)[sel],
                "n": n[sel],
                "images": images[sel],
                "tokens": [list(range(k)) for k in n[sel]],
            }
        )
        pq.write_table(table, os.path.join(root, f"part-{f}.parquet"), row_group_size=100)
    files = os.path.join(str(root), "*.parquet")
    return Source(path="parquet", data_files=files, columns=["id", "n", "images"]), n, images


def _dm(source, **kw):
    args = dict(train=source, batch_tokens=BUDGET, length="n", batch_size=64, buffer_size=200, seed=3, shuffle=True)
    return StreamingDataModule(**{**args, **kw})


def _epochs(loader, epochs=2):
    out = []
    for _ in range(epochs):
        out.append([(b["id"].tolist(), int(b["n"].sum()), int(b["images"].sum())) for b in loader])
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_row_once_under_budget_with_a_known_length(varied, num_workers):
    source, n, _ = varied
    loader = _dm(source, num_workers=num_workers).train_dataloader()
    length = len(loader)
    epochs = _epochs(loader)
    for epoch, steps in enumerate(epochs):
        assert len(steps) == length  # len() is the steps the epoch takes, every epoch
        ids = [i for rows, _, _ in steps for i in rows]
        assert len(ids) == len(set(ids))  # no row twice
        if epoch == 0:  # epoch 0 fixes the steps per epoch: no row left out
            assert sorted(ids) == list(range(ROWS))
            assert sum(t for _, t, _ in steps) == int(n.sum())
        assert ROWS - len(ids) <= ROWS // 100  # a later epoch that packs into more steps leaves a few rows out
        tokens = [t for _, t, _ in steps]
        assert max(tokens) <= BUDGET
        assert np.mean(tokens) / BUDGET >= 0.9  # fill of the budget
    assert [r for r, _, _ in epochs[0]] != [r for r, _, _ in epochs[1]]  # a fresh plan each epoch
    assert length < ROWS / 4  # far fewer steps than rows: ~5 rows a step


def test_the_same_plan_whatever_the_workers(varied):
    """The plan depends on the lanes (the order's), never on who reads them."""
    source, _, _ = varied
    plans = [_epochs(_dm(source, num_workers=w, lanes=6).train_dataloader(), 1)[0] for w in (0, 2, 3)]
    assert plans[0] == plans[1] == plans[2]


def test_image_budget_and_row_cap(varied):
    source, _, images = varied
    steps = _epochs(
        _dm(source, length=lambda row: (row["n"], row["images"]), max_images=4, batch_size=3).train_dataloader(), 1
    )[0]
    assert max(k for _, _, k in steps) <= 4
    assert max(len(rows) for rows, _, _ in steps) <= 3
    assert sorted(i for rows, _, _ in steps for i in rows) == list(range(ROWS))  # epoch 0: every row


def test_length_from_a_list_column_counts_its_items(varied):
    source, _, _ = varied
    by_count = _epochs(_dm(source).train_dataloader(), 1)[0]
    with_list = dataclasses.replace(source, columns=["id", "n", "images", "tokens"])
    by_list = _epochs(
        _dm(with_list, length="tokens", transform=Map(keep_all, remove_columns=["tokens"])).train_dataloader(), 1
    )[0]
    assert by_count == by_list


def keep_all(batch):
    return {}


def test_a_row_over_the_budget_is_named(varied):
    source, n, _ = varied
    first = int(np.flatnonzero(n > 100)[0])
    with pytest.raises(
        RowTooLongError, match=rf"part-0.parquet.* row {first}\b.* has {n[first]} tokens, more than batch_tokens=100"
    ):
        _dm(source, batch_tokens=100).train_dataloader()


def test_bad_length_arguments_are_named(varied):
    source, _, _ = varied
    with pytest.raises(ValueError, match="token-budget steps and token blocks need length"):
        StreamingDataModule(train=source, batch_tokens=512)
    with pytest.raises(ValueError, match="has no column 'nope'"):
        _dm(source, length="nope").train_dataloader()
    with pytest.raises(TypeError, match=r"length function .* returned 'x' for .*row 0"):
        _dm(source, length=lambda row: "x").train_dataloader()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_mid_epoch(tmp_path, varied, num_workers):
    source, _, _ = varied
    report = assert_resume_equivalent(
        lambda: _dm(source, num_workers=num_workers), stop_at_step=300, tmp_path=str(tmp_path), max_epochs=2
    )
    steps = len(_dm(source, num_workers=num_workers).train_dataloader())
    assert len(report.uninterrupted) == 2 * steps and len(report.before_crash) == 300 > steps  # crash in epoch 1


def test_a_checkpoint_of_another_budget_is_refused(tmp_path, varied):
    source, _, _ = varied
    loader = _dm(source).train_dataloader()
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    assert state["batch_tokens"] == BUDGET and state["position"] > 0
    other = _dm(source, batch_tokens=1024).train_dataloader()
    with pytest.raises(StateMismatchError, match="token budget"):
        other.load_state_dict(state)
    fixed = StreamingDataModule(train=source, batch_size=64, buffer_size=200, seed=3).train_dataloader()
    with pytest.raises(StateMismatchError, match="token budget"):
        fixed.load_state_dict(state)


def test_fit_trains_the_planned_steps(tmp_path, varied):
    source, _, _ = varied
    rec = BatchRecorder()
    dm = _dm(source, num_workers=2)
    trainer = cpu_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[rec])
    from lightning_stream.testing import IdModel

    trainer.fit(IdModel(), datamodule=dm)
    assert trainer.num_training_batches == len(rec.batches) == len(dm.train_dataloader())
    assert sorted(i for _, ids in rec.batches for i in ids) == list(range(ROWS))


def test_best_fit_decreasing_fills_steps():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.6, 0.7, 5000), 8, 2048).astype(np.int64)
    steps = pack_window(lengths, None, Budget(tokens=4096, rows=10**6))
    fills = np.array([lengths[s].sum() for s in steps])
    assert sorted(i for s in steps for i in s) == list(range(5000)) and fills.max() <= 4096
    assert fills.mean() / 4096 > 0.98


def tokens_of(row):
    return row["n"]


def test_max_images_needs_image_counts_and_a_function_can_be_named_by_its_path(varied):
    source, _, _ = varied
    with pytest.raises(ValueError, match=r"max_images=4 needs each row's images.*TokensAndImages"):
        _dm(source, max_images=4).train_dataloader()
    by_path = _epochs(_dm(source, length="test_budget.tokens_of").train_dataloader(), 1)[0]  # as YAML names it
    assert by_path == _epochs(_dm(source).train_dataloader(), 1)[0]
    counted = _epochs(_dm(source, length=TokensAndImages("n", "pictures"), max_images=4).train_dataloader(), 1)[0]
    assert sorted(i for rows, _, _ in counted for i in rows) == list(range(ROWS))  # rows without the column: 0 images
