"""Bad rows, broken transforms, empty epochs, nulls, uneven evaluation and bad arguments: every
error names its culprit (function, column, file and row, argument) and the fix (issue #14)."""

import collections
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cpu_trainer, epoch_batches, epoch_ids

from lightning_stream import Filter, Map, RowError, StreamingDataModule
from lightning_stream.dataset import StreamingDataset
from lightning_stream.loader import StreamingDataLoader
from lightning_stream.split import EvalLayout
from lightning_stream.tally import EmptyEpochError
from lightning_stream.testing import IdModel
from lightning_stream.transforms import TransformError


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> str:
    """40 rows in one file: 4 batches of 10."""
    path = str(tmp_path_factory.mktemp("forty") / "forty.parquet")
    pq.write_table(pa.table({"id": list(range(40)), "text": [f"row {i}" for i in range(40)]}), path)
    return path


def batches(train, **kw):
    return epoch_batches(StreamingDataModule(train=train, shuffle=False, batch_size=10, **kw))


def written(tmp_path, name, columns: dict) -> str:
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table(columns), path)
    return path


# -- 1. transforms return any mapping; a broken transform is named, never taken for a bad row ---------
def test_transform_may_return_any_mapping(forty):
    out = batches(forty, transform=lambda b: collections.UserDict({"n": [len(t) for t in b["text"]]}), on_error="skip")
    assert len(out) == 4 and out[0]["n"].tolist() == [5] * 10


@pytest.fixture(scope="module")
def tokenizer():
    """A real fast tokenizer, trained here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [f"row {i}" for i in range(40)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_tokenizer_batch_encoding_is_a_transform_output(forty, tokenizer):
    dm = StreamingDataModule(
        train=forty, transform=lambda b: tokenizer(b["text"]), shuffle=False, batch_size=10, on_error="skip"
    )
    loader = dm.train_dataloader()
    out = list(loader)
    assert type(tokenizer(["row 1"])).__name__ == "BatchEncoding"
    assert len(out) == 4 and loader.stats.skipped == 0
    assert out[0]["input_ids"].shape == (10, 2) and out[0]["attention_mask"].tolist() == [[1, 1]] * 10
    assert out[0]["input_ids"][:, 0].unique().tolist() == [tokenizer.convert_tokens_to_ids("row")]


def forgets_return(batch):
    batch["n"] = [1] * len(batch["id"])


def row_forgets_return(row):
    row["n"] = 1


def keeps_per_batch(batch):
    return True


def row_filter_forgets_return(row):
    row["id"] > 3  # noqa: B015 - the bug under test: no return


BROKEN = [
    (lambda b: [1] * len(b["id"]), r"must return a mapping of columns \(dict, BatchEncoding, \.\.\.\), got list"),
    (forgets_return, r"forgets_return \(test_errors_rows\.py:\d+\) returned None; .* is its `return` missing\?"),
    (
        Map(row_forgets_return, batched=False),
        r"row_forgets_return .*returned None; .*batched=False.* is its `return` missing\?",
    ),
    (
        lambda b: {"x": [1, 2, 3]},
        r"unequal length \{'id': 10, 'text': 10, 'x': 3\} for a batch of 10 rows; return one value per row",
    ),
    (
        lambda b: {"total": [sum(b["id"])]},
        r"unequal length \{'id': 10, 'text': 10, 'total': 1\}",
    ),  # one value per batch
    (lambda b: {"n": len(b["id"])}, r"returned column 'n' as one int, not one value per row: .*or pass batched=False"),
    (
        lambda b: {"n": [len(t) for t in b["txt"]]},
        r"reads column 'txt', which the batch does not have \(columns: \['id', 'text'\]\)",
    ),
    (
        Filter(keeps_per_batch),
        r"filter test_errors_rows\.keeps_per_batch .*returned one bool for 10 rows; return one bool per row",
    ),
    (Filter(row_filter_forgets_return, batched=False), r"filter .*row_filter_forgets_return .*returned None"),
]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("transform,message", BROKEN, ids=[str(i) for i in range(len(BROKEN))])
def test_broken_transform_is_named_not_a_bad_row(forty, transform, message, on_error):
    with pytest.raises(TransformError, match=message) as info:
        batches(forty, transform=transform, on_error=on_error)
    text = str(info.value)
    assert not isinstance(info.value, RowError) and "on_error" not in text  # skip would hide nothing: it is no remedy
    assert re.search(r"(transform|filter) test_errors_rows\.", text)  # module and qualname
    assert "(seen on the batch that begins at " in text and "forty.parquet row 0)" in text


def test_broken_transform_in_a_worker_is_named(forty):
    with pytest.raises(
        TransformError,
        match=r"(?s)Caught TransformError in DataLoader worker.*transform test_errors_rows\.test_broken_transform_in_a_worker_is_named\.<locals>\.<lambda> \(test_errors_rows\.py:\d+\) returned columns of unequal length",
    ):
        batches(forty, transform=lambda b: {"total": [sum(b["id"])]}, num_workers=1)


def test_a_row_that_raises_is_still_a_bad_row(forty):
    def no_row_7(batch):
        if 7 in batch["id"]:
            raise ValueError("row 7 is bad")
        return batch

    with pytest.raises(
        RowError, match=r"bad row in .*forty.parquet row 7: ValueError: row 7 is bad \(pass on_error='skip'"
    ):
        batches(forty, transform=no_row_7)
    assert [len(b["id"]) for b in batches(forty, transform=no_row_7, on_error="skip")] == [9, 10, 10, 10]


def test_transform_names_are_checked_at_construction():
    with pytest.raises(ImportError, match="cannot import transform function 'no_such_module.tokenize'"):
        StreamingDataModule(train="x.parquet", transform="no_such_module.tokenize")
    with pytest.raises(TypeError, match="expected a callable or an import path 'module.function', got 3"):
        StreamingDataModule(train="x.parquet", transform=[3])


# -- 2. an epoch of 0 steps is an error with its cause ---------------------------------------------------
def keep_none(batch):
    return [False] * len(batch["id"])


def test_filter_removing_every_row_fails_the_fit(forty, tmp_path):
    dm = StreamingDataModule(train=forty, filter=keep_none, batch_size=10)
    trainer = cpu_trainer(max_epochs=1, default_root_dir=tmp_path)
    message = r"epoch 0 of .*forty.parquet trained 0 steps where len\(\) said 4: of the 40 rows it read, 40 were removed by filter test_errors_rows\.keep_none \(test_errors_rows\.py:\d+\)"
    with pytest.raises(EmptyEpochError, match=message):
        trainer.fit(IdModel(), datamodule=dm)
    # Every step was an EmptyBatch (IdModel trains on any batch); the error comes at the last one.
    assert trainer.global_step == 3 and trainer.current_epoch == 0


def test_every_row_skipped_is_an_error_with_the_first_culprits(forty):
    def broken(batch):
        return {"n": [t.size for t in batch["text"]]}  # str has no .size: fails on every row

    with pytest.raises(
        EmptyEpochError,
        match=r"of the 40 rows it read, 40 were skipped as bad rows: first culprits: \S*forty.parquet row 0: AttributeError: 'str' object has no attribute 'size'; .*row 1: .*run with on_error='raise'",
    ):
        batches(forty, transform=broken, on_error="skip")


def test_flood_of_skips_stops_before_the_epoch_ends(tmp_path):
    path = written(tmp_path, "big", {"id": list(range(3000))})
    loader = StreamingDataModule(
        train=path, transform=lambda b: {"n": [1 / 0 for _ in b["id"]]}, batch_size=100, shuffle=False, on_error="skip"
    ).train_dataloader()
    with pytest.raises(
        EmptyEpochError,
        match=r"its first 1000 rows were all skipped as bad rows, none trained; first culprits: \S*big.parquet row 0: ZeroDivisionError",
    ):
        list(loader)
    assert loader.stats.rows_read < 3000  # stopped early, not at the end of the epoch


def test_source_with_no_column_is_an_error(forty):
    from lightning_stream import Source

    with pytest.raises((EmptyEpochError, ValueError), match=r"column"):  # refused at construction once Source checks it
        batches(Source(path="parquet", data_files=forty, columns=[]))


def test_map_that_removes_every_column_is_named(forty):
    with pytest.raises(TransformError, match=r"transform .*<lambda> .*left the batch with no column"):
        batches(forty, transform=Map(lambda b: {}, remove_columns=["id", "text"]))


# -- 3. a worker's exception is itself; only a signal is a kill -----------------------------------------
@pytest.fixture(scope="module")
def truncated_jsonl(tmp_path_factory):
    import gzip
    import json

    root = tmp_path_factory.mktemp("cut")
    for i, (a, b) in enumerate([(0, 400), (400, 1001)]):
        with gzip.open(root / f"part-{i}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"id": j, "text": f"row {j}"}) + "\n" for j in range(a, b))
    data = (root / "part-1.jsonl.gz").read_bytes()
    (root / "part-1.jsonl.gz").write_bytes(data[: len(data) // 2])
    return str(root / "*.jsonl.gz")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_truncated_shard_is_reported_as_its_error_not_a_dead_worker(truncated_jsonl, num_workers):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the point is which error, checked below
        batches(truncated_jsonl, num_workers=num_workers)
    text = "".join(str(e) for e in (info.value, info.value.__cause__) if e is not None)
    assert "died" not in text and "out-of-memory" not in text
    assert "part-1.jsonl.gz" in text or "Compressed file ended before the end-of-stream marker" in text
    if num_workers:
        assert "in DataLoader worker process" in text and "Original Traceback" in text


def test_collate_fn_bug_in_a_worker_is_reported_as_itself(forty):
    def collate(rows):
        return {"mean": sum(r["id"] for r in rows) / 0}

    with pytest.raises(
        ZeroDivisionError,
        match=r"(?s)Caught ZeroDivisionError in DataLoader worker process.*raised by collate_fn test_errors_rows\..*collate",
    ):
        batches(forty, collate_fn=collate, num_workers=2)


_EXITING_WORKER = """
import os, sys
from lightning_stream import StreamingDataModule

def leave(batch):
    if 20 in batch["id"]:
        os._exit(3)  # no exception, no signal
    return batch

for _ in StreamingDataModule(train=sys.argv[1], transform=leave, batch_size=10, num_workers=2, shuffle=False).train_dataloader():
    pass
"""


def test_worker_that_exits_is_not_called_killed(forty):
    # In a child process, as test_errors.test_killed_worker_is_an_error_not_a_hang.
    proc = subprocess.run([sys.executable, "-c", _EXITING_WORKER, forty], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"a DataLoader worker reading .*forty.parquet died \(exit code 3, no exception\)", last), (
        proc.stderr[-2000:]
    )
    assert "out-of-memory" not in last and "killed" not in last


# -- 4. nulls in numeric columns -----------------------------------------------------------------------
NULLS = {
    "float": (
        [1.0, None, 2.0, 3.0],
        r"column 'x' is null \(None\) in 1 of the batch's 4 rows, first in row 1; a tensor holds no null: fill it",
    ),
    "int first": ([None, 1, 2, 3], r"column 'x' is null \(None\) in 1 of the batch's 4 rows, first in row 0"),
    "int later": ([1, 2, None, None], r"column 'x' is null \(None\) in 2 of the batch's 4 rows, first in row 2"),
    "bool": ([True, None, False, True], r"column 'x' is null \(None\) in 1 of the batch's 4 rows, first in row 1"),
    "list": (
        [[1, 2], None, [3, 4], [5, 6]],
        r"column 'x' is null \(None\) in 1 of the batch's 4 rows, first in row 1;",
    ),
    "inside a list": ([[1.0, 2.0], [3.0, None], [3.0, 4.0], [5.0, 6.0]], r"first in row 1 \(at index \[1\]\)"),
}


@pytest.mark.parametrize("batch_format", ["python", "numpy"])
@pytest.mark.parametrize("case", list(NULLS))
def test_null_in_a_numeric_column_names_the_column(tmp_path, case, batch_format):
    values, message = NULLS[case]
    path = written(tmp_path, "nulls", {"x": values})
    with pytest.raises(
        ValueError, match=message + r".*drop such rows with a filter, or pass a collate_fn that handles None"
    ):
        batches(path, batch_format=batch_format)


def test_a_null_filled_with_a_mask_collates(tmp_path):
    path = written(tmp_path, "nulls", {"x": [1.0, None, 2.0, 3.0]})
    fill = lambda b: {"x": [v or 0.0 for v in b["x"]], "x_mask": [v is not None for v in b["x"]]}  # noqa: E731
    (batch,) = batches(path, transform=fill)
    assert batch["x"].tolist() == [1.0, 0.0, 2.0, 3.0] and batch["x_mask"].tolist() == [True, False, True, True]


@pytest.mark.parametrize("values,row", [(["1", "2", "n/a", "3"], 2), (["n/a", "2", "1", "3"], 0)])
def test_string_among_numbers_names_the_column(tmp_path, values, row):
    path = written(tmp_path, "na", {"x": values})
    to_numbers = lambda b: {"x": [float(v) if v != "n/a" else v for v in b["x"]]}  # noqa: E731
    with pytest.raises(
        ValueError, match=rf"column 'x' holds 'n/a' \(str\) in row {row} of the batch, among numbers; convert it"
    ):
        batches(path, transform=to_numbers)


def test_nulls_in_strings_stay_and_an_all_null_batch_stays_a_list(tmp_path):
    path = written(tmp_path, "text", {"t": ["a", None, "b", "c"], "x": pa.array([None] * 4, pa.float64())})
    (batch,) = batches(path)
    assert batch["t"] == ["a", None, "b", "c"] and batch["x"] == [None] * 4


# -- 5. evaluation reads every row once, at any batch size and world size ------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_eval_layout_reads_every_row_once(world_size, batch_size):
    for num_rows in range(world_size, 40):
        for workers in (1, 2, 3):
            lay = EvalLayout(num_rows, batch_size, world_size)
            seen = []
            for rank in range(world_size):
                sizes = []
                for step in range(lay.num_steps):
                    a, b = lay.batch_range(step, rank, workers)
                    seen.extend(range(a, b))
                    sizes.append(b - a)
                assert max(sizes) <= batch_size and max(sizes) - min(sizes) <= 1
                assert 0 not in sizes or (batch_size == 1 and sizes.index(0) == lay.num_steps - 1)  # the last step only
            assert sorted(seen) == list(range(num_rows)), (num_rows, batch_size, world_size, workers)


def test_eval_rank_with_a_row_fewer_ends_a_step_early(tmp_path):
    path = written(tmp_path, "five", {"id": list(range(5))})
    val = StreamingDataModule(train=path, val=path, batch_size=1, val_batch_size=1).val_dataloader().dataset
    seen = []
    for rank in (0, 1):
        loader = StreamingDataLoader(StreamingDataset(val.source, val.options, rank=rank, world_size=2), num_workers=2)
        ids = epoch_ids(loader, per_batch=True)
        assert len(loader) == 3 and len(ids) == (3 if rank == 0 else 2)
        seen += [i for b in ids for i in b]
    assert sorted(seen) == [0, 1, 2, 3, 4]


_DDP_VAL = """
import json, os, sys
import lightning.pytorch as pl
import torch
from lightning_stream import StreamingDataModule
from lightning_stream.testing import IdModel

class Model(IdModel):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(1))  # DDP syncs buffers in a forward: one rank's extra step must not wait

    def validation_step(self, batch, batch_idx):
        self.count += 1
        with open(os.path.join(sys.argv[2], f"val-rank{self.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(batch["id"].tolist()) + "\\n")
        self.log("val/loss", batch["id"].float().mean(), sync_dist=True)

if __name__ == "__main__":
    dm = StreamingDataModule(train=sys.argv[1], val=sys.argv[1], batch_size=1, val_batch_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=sys.argv[2])
    trainer.fit(Model(), datamodule=dm)
    # An orderly end of gloo: left to the interpreter's exit, its threads were once destroyed while
    # joinable on a loaded machine ("terminate called without an active exception", SIGABRT).
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_validation_of_rows_that_do_not_divide_over_ranks(tmp_path):
    path = written(tmp_path, "five", {"id": list(range(5))})
    script = tmp_path / "ddp_val.py"
    script.write_text(_DDP_VAL)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), path, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    per_rank = [
        [row for line in open(tmp_path / f"val-rank{r}.jsonl") for row in __import__("json").loads(line)]
        for r in (0, 1)
    ]
    assert per_rank == [[0, 1, 2], [3, 4]]  # every row once, no pad; rank 1 one step fewer


# -- 6. arguments are checked at construction ----------------------------------------------------------
ARGUMENTS = [
    (
        {"val_batch_size": -1},
        ValueError,
        r"StreamingDataModule\(val_batch_size=-1\): val_batch_size must be None \(batch_size\) or an int >= 1",
    ),
    ({"val_batch_size": 0}, ValueError, r"val_batch_size must be None \(batch_size\) or an int >= 1"),
    ({"prefetch_factor": 0}, ValueError, r"prefetch_factor must be None \(torch's 2\) or an int >= 1"),
    (
        {"batch_size": "32"},
        TypeError,
        r"StreamingDataModule\(batch_size='32'\): batch_size must be an int >= 1, got a str",
    ),
    ({"batch_size": True}, TypeError, r"batch_size must be an int >= 1, got a bool"),
    ({"num_workers": 1.5}, TypeError, r"num_workers must be an int >= 0, got a float"),
    ({"buffer_size": None}, TypeError, r"buffer_size must be an int >= 1, got None"),
    ({"max_skipped": -1}, ValueError, r"max_skipped must be None \(no limit\), a count >= 1 or a fraction in \[0, 1\)"),
    ({"shuffle": "yes"}, TypeError, r"shuffle must be True or False, got a str"),
    ({"on_error": "ignore"}, ValueError, r"on_error must be 'raise' or 'skip'"),
    ({"even": "cut"}, ValueError, r"even must be 'drop' or 'pad'"),
    ({"lanes": 0}, ValueError, r"lanes must be None \(world_size x num_workers\) or an int >= 1"),
    ({"collate_fn": "pad"}, TypeError, r"collate_fn must be None or a callable, got a str"),
]


@pytest.mark.parametrize(
    "kwargs,kind,message", ARGUMENTS, ids=[next(iter(a[0])) + "=" + repr(next(iter(a[0].values()))) for a in ARGUMENTS]
)
def test_arguments_are_checked_at_construction(kwargs, kind, message):
    with pytest.raises(kind, match=message):
        StreamingDataModule(train="x.parquet", **kwargs)


@pytest.mark.parametrize(
    "text,said",
    [
        (
            "DataLoader worker (pid 12) is killed by signal: Killed. ",
            r"died \(killed by SIGKILL\): most often the out-of-memory killer",
        ),
        (
            "DataLoader worker (pid 12) is killed by signal: Bus error. ",
            r"died \(killed by SIGBUS\): most often too little shared memory",
        ),
        (
            "DataLoader worker (pid 12) is killed by signal: Segmentation fault. ",
            r"died \(killed by SIGSEGV\): a crash in native code",
        ),
    ],
)
def test_worker_death_names_the_signal_torch_reports(text, said):
    from lightning_stream.workers import worker_death

    assert re.search(said, worker_death(RuntimeError(text), None, 2, "data.parquet"))
    assert worker_death(RuntimeError(f"Caught ValueError in DataLoader worker process 0. {text}"), None, 2, "d") is None
    assert worker_death(EOFError("Compressed file ended"), None, 0, "d") is None  # no worker: the error itself
