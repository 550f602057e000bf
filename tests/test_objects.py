"""The ``datasets`` objects users already hold, passed as they are: Dataset, DatasetDict, IterableDataset."""

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import epoch_batches, epoch_ids

from lightning_stream import DatasetSource, Source, StreamingDataModule
from lightning_stream.stores import ChainStore, open_store
from lightning_stream.testing import assert_resume_equivalent


def tokenize(batch, prefix_len):
    # A batched map with fn_kwargs, as in the datasets docs; counts its calls per row in the output.
    return {"input_ids": [[len(t)] * prefix_len for t in batch["text"]], "mapped_id": list(batch["id"])}


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("objects") / "disk")
    ids = list(range(600))
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"id": ids, "text": [f"row {i}" for i in ids]}),
        validation=datasets.Dataset.from_dict({"id": ids[:50], "text": ["v"] * 50}),
    ).save_to_disk(path)
    return path


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["Dataset", "DatasetDict", "IterableDataset"])
def test_resume_is_exact_with_a_datasets_object(tmp_path, disk, kind, num_workers):
    def make():
        dd = datasets.load_from_disk(disk)
        train = {
            "Dataset": lambda: dd["train"],
            "DatasetDict": lambda: dd,
            # The recipe of the datasets docs: to_iterable_dataset, then a batched map with fn_kwargs.
            "IterableDataset": lambda: (
                dd["train"].to_iterable_dataset(num_shards=8).map(tokenize, batched=True, fn_kwargs={"prefix_len": 3})
            ),
        }[kind]()
        return StreamingDataModule(train=train, batch_size=16, num_workers=num_workers, shuffle=True, buffer_size=64)

    dm = make()
    assert len(dm.train_dataloader()) == -(-600 // 16)  # a known length, from the files behind the object
    report = assert_resume_equivalent(make, stop_at_step=13, tmp_path=str(tmp_path), max_epochs=2)
    assert len(report.after_resume) == 2 * 38 - 13
    ids = epoch_ids(make())
    assert sorted(ids) == list(range(600))  # every row once per epoch
    if kind == "IterableDataset":
        batch = next(iter(make().train_dataloader()))
        assert batch["input_ids"].shape[1] == 3 and batch["mapped_id"].tolist() == batch["id"].tolist()


def test_the_chain_runs_once_per_row_and_never_on_rows_a_resume_skips(disk, tmp_path):
    calls = tmp_path / "calls.txt"

    def counted(batch):
        with open(calls, "a") as f:
            f.write("".join(f"{i}\n" for i in batch["id"]))
        return {"double": [2 * i for i in batch["id"]]}

    ids = datasets.load_from_disk(disk)["train"].to_iterable_dataset(num_shards=4).map(counted, batched=True)
    loader = StreamingDataModule(train=ids, batch_size=50, shuffle=True).train_dataloader()
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    resumed = StreamingDataModule(train=ids, batch_size=50, shuffle=True).train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    seen = [i for b in head + rest for i in b["id"].tolist()]
    assert sorted(seen) == list(range(600))
    assert all((b["double"] == 2 * b["id"]).all() for b in head + rest)
    mapped = [int(x) for x in calls.read_text().split()]
    assert sorted(mapped) == list(range(600))  # once per row: the resume skipped 150 rows unmapped


def test_column_ops_filter_and_cast_run_as_datasets_runs_them(disk):
    ids = (
        datasets.load_from_disk(disk)["train"]
        .to_iterable_dataset(num_shards=2)
        .filter(lambda row: row["id"] % 3 == 0)
        .rename_column("text", "sentence")
        .remove_columns(["sentence"])
        .cast_column("id", datasets.Value("int32"))
        .shuffle(seed=3, buffer_size=10)
    )
    dm = StreamingDataModule(train=ids, batch_size=20, shuffle=True)
    batches = list(dm.train_dataloader())
    assert set(batches[0]) == {"id"}
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(0, 600, 3))
    assert isinstance(open_store(dm.train_source), ChainStore)


def test_a_parquet_stream_object_is_read_by_index(tmp_path):
    for k in range(3):
        pq.write_table(
            pa.table({"id": list(range(k * 100, k * 100 + 100))}), str(tmp_path / f"p{k}.parquet"), row_group_size=25
        )
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "p*.parquet"), split="train", streaming=True)
    dm = StreamingDataModule(train=stream.map(lambda r: {"plus": r["id"] + 1}), batch_size=10, num_workers=2)
    loader = dm.train_dataloader()
    assert len(loader) == 30
    rows = [(i, p) for b in epoch_batches(loader) for i, p in zip(b["id"].tolist(), b["plus"].tolist())]
    assert sorted(rows) == [(i, i + 1) for i in range(300)]


def test_a_dataset_with_a_format_or_an_indices_mapping(disk):
    train = datasets.load_from_disk(disk)["train"]
    picked = train.select(range(0, 600, 2)).with_transform(lambda b: {"id": b["id"], "n": [len(t) for t in b["text"]]})
    batches = list(StreamingDataModule(train=picked, batch_size=32, shuffle=False).train_dataloader())
    assert [i for b in batches for i in b["id"].tolist()] == list(range(0, 600, 2))
    assert set(batches[0]) == {"id", "n"}


def test_a_datasetdict_without_the_split_names_the_splits(disk):
    with pytest.raises(KeyError, match=r"has no split 'test'; its splits are \['train', 'validation'\]"):
        StreamingDataModule(train=datasets.load_from_disk(disk), test=datasets.load_from_disk(disk))


@pytest.mark.parametrize(
    "split, expected",
    [("train[:90%]", range(0, 540)), ("train[100:]", range(100, 600)), ("train[-50:]", range(550, 600))],
)
def test_split_slicing_for_every_source_that_knows_its_length(disk, tmp_path, split, expected):
    pq.write_table(pa.table({"id": list(range(600))}), str(tmp_path / "all.parquet"), row_group_size=64)
    for source in (
        Source(path=disk, split=split),
        Source(path="parquet", data_files=str(tmp_path / "all.parquet"), split=split),
        DatasetSource(datasets.load_from_disk(disk)["train"], split=split),
    ):
        dm = StreamingDataModule(train=source, batch_size=25, shuffle=True)
        assert sorted(epoch_ids(dm)) == list(expected)


def test_slicing_a_stream_is_refused_naming_the_source(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(10)))
    with pytest.raises(
        ValueError, match=r"split='train\[:50%\]' slices rows, which needs a source that knows its length"
    ):
        StreamingDataModule(train=Source(path="json", data_files=str(path), split="train[:50%]")).train_dataloader()


def test_the_private_datasets_attributes_we_read_are_still_there(disk):
    """objects.py reads these; a datasets release that moves them must fail here, by name."""
    from datasets.iterable_dataset import ArrowExamplesIterable

    ds = datasets.load_from_disk(disk)["train"]
    assert hasattr(ds, "_indices") and ds.select([1, 0])._indices is not None and hasattr(ds, "_fingerprint")
    ids = ds.to_iterable_dataset(num_shards=2).map(tokenize, batched=True, fn_kwargs={"prefix_len": 1})
    assert hasattr(ids, "_ex_iterable") and hasattr(ids, "_distributed")
    node = ids._ex_iterable
    while hasattr(node, "ex_iterable"):
        node = node.ex_iterable
    assert isinstance(node, ArrowExamplesIterable)
    assert node.generate_tables_fn.__qualname__ == "Dataset._generate_tables_from_shards" and "shards" in node.kwargs


def _generated(n):
    for i in range(n):
        yield {"id": i, "text": f"row {i}"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_generator_iterable_dataset_is_read_as_a_stream_and_resumes_exactly(tmp_path, num_workers):
    def make():
        ids = datasets.IterableDataset.from_generator(_generated, gen_kwargs={"n": 300}).map(
            lambda r: {"n": len(r["text"])}
        )
        return StreamingDataModule(
            train=ids.shuffle(seed=5, buffer_size=50), batch_size=16, num_workers=num_workers, buffer_size=64
        )

    assert_resume_equivalent(make, stop_at_step=7, tmp_path=str(tmp_path), max_epochs=2)
    batches = epoch_batches(make())
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(300))
    assert all((b["n"] == torch.tensor([len(f"row {i}") for i in b["id"].tolist()])).all() for b in batches)
