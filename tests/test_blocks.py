"""Fixed-size token blocks (block_size): concatenate then cut, no token lost or repeated, exact on resume."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_stream import Filter, Map, Source, StreamingDataModule
from lightning_stream.testing import assert_resume_equivalent

ROWS, BLOCK, PER_STEP = 600, 65, 4  # litgpt's block_size + 1 = 65: inputs and targets of 64


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Documents of 1 to 200 tokens; token ``j`` of document ``i`` is ``i * 1000 + j``."""
    root = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(11)
    n = rng.integers(1, 200, ROWS)
    for f, a in enumerate(range(0, ROWS, ROWS // 3)):
        ids = np.arange(a, a + ROWS // 3)
        table = pa.table({"id": ids, "n": n[ids], "tokens": [[int(i * 1000 + j) for j in range(n[i])] for i in ids]})
        pq.write_table(table, os.path.join(root, f"docs-{f}.parquet"), row_group_size=50)
    return Source(path="parquet", data_files=os.path.join(str(root), "*.parquet")), n


def tokenize(batch):
    return {"input_ids": batch["tokens"]}


def _dm(source, **kw):
    args = dict(
        train=source,
        transform=Map(tokenize, remove_columns=["id", "n", "tokens"]),
        block_size=BLOCK,
        length="n",
        batch_size=PER_STEP,
        buffer_size=100,
        seed=5,
    )
    return StreamingDataModule(**{**args, **kw})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_step_holds_the_same_blocks_and_no_token_is_lost(documents, num_workers):
    source, n = documents
    loader = _dm(source, num_workers=num_workers).train_dataloader()
    batches = [b["input_ids"] for b in loader]
    assert len(batches) == len(loader)
    assert {tuple(b.shape) for b in batches} == {(PER_STEP, BLOCK)}
    flat = np.concatenate([b.numpy().reshape(-1) for b in batches])
    assert len(set(flat.tolist())) == len(flat)  # no token twice
    lanes = max(1, num_workers)
    lost = int(n.sum()) - len(flat)
    assert 0 <= lost < lanes * PER_STEP * BLOCK  # all but the tail that does not fill a last step
    # Tokens carry across row and block boundaries in order: inside a step's contiguous token range,
    # a document's tokens are consecutive and the next document starts at its first token.
    for b in batches:
        doc, pos = b.numpy().reshape(-1) // 1000, b.numpy().reshape(-1) % 1000
        same = doc[1:] == doc[:-1]
        assert (pos[1:][same] == pos[:-1][same] + 1).all() and (pos[1:][~same] == 0).all()
    if num_workers == 0:  # one lane: the steps follow each other in the stream
        starts = [int(b[0, 0]) for b in batches[1:]]
        ends = [int(b[-1, -1]) for b in batches[:-1]]
        assert all(s == e + 1 or s % 1000 == 0 for s, e in zip(starts, ends))


def test_a_fresh_order_each_epoch(documents):
    loader = _dm(source=documents[0]).train_dataloader()
    first = [b["input_ids"][0, 0].item() for b in loader]
    second = [b["input_ids"][0, 0].item() for b in loader]
    assert first != second and len(first) == len(second)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact(tmp_path, documents, num_workers):
    source, _ = documents
    steps = len(_dm(source, num_workers=num_workers).train_dataloader())
    report = assert_resume_equivalent(
        lambda: _dm(source, num_workers=num_workers),
        stop_at_step=steps + 7,  # mid epoch 1: the carried remainder is re-derived from the position
        tmp_path=str(tmp_path),
        max_epochs=2,
        id_key="input_ids",
    )
    assert len(report.uninterrupted) == 2 * steps


def test_a_length_that_does_not_match_the_transform_is_named(documents):
    source, _ = documents

    def off_by_one(batch):
        return {"input_ids": [t[:-1] for t in batch["tokens"]]}

    loader = _dm(source, transform=Map(off_by_one, remove_columns=["id", "n", "tokens"])).train_dataloader()
    with pytest.raises(
        ValueError, match=r"docs-\d.parquet.* row \d+: length says \d+ tokens but the transform's 'input_ids' has"
    ):
        next(iter(loader))


def test_a_filter_is_refused(documents):
    with pytest.raises(ValueError, match="no row may be removed"):
        _dm(documents[0], filter=Filter(lambda b: [True] * len(b["id"])))
    with pytest.raises(ValueError, match="choose one"):
        _dm(documents[0], batch_tokens=512)
