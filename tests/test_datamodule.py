"""The datamodule on real datasets objects and real Trainer runs."""

import math
import os

import pytest
import torch
from conftest import PARQUET_SIZES
from helpers import cpu_trainer, epoch_batches, epoch_ids

from lightning_stream import EmptyBatch, Filter, Source, StreamingDataModule, empty_step_loss
from lightning_stream.testing import BatchRecorder, IdModel


def text_len(batch):
    return {"n": [len(t) for t in batch["text"]]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffled_epochs_are_permutations_that_differ(source, num_workers):
    dm = StreamingDataModule(
        train=source, transform=text_len, batch_size=16, num_workers=num_workers, buffer_size=100, seed=1
    )
    loader = dm.train_dataloader()
    epochs = []
    for e in range(2):
        epochs.append(epoch_ids(loader, e))
    for ids in epochs:
        assert sorted(ids) == list(range(1000))
    assert epochs[0] != epochs[1]
    # Same seed and lanes (by default, the readers when training starts): same order, whatever the worker count.
    again = StreamingDataModule(
        train=source, batch_size=16, num_workers=0, buffer_size=100, seed=1, lanes=max(1, num_workers)
    )
    assert epoch_ids(again.train_dataloader()) == epochs[0]


def test_transform_output_reaches_batch(source):
    dm = StreamingDataModule(train=source, transform=text_len, batch_size=8, shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["id"].tolist() == list(range(8))
    assert batch["n"].tolist() == [len(f"row {i}") for i in range(8)]
    assert batch["text"][0] == "row 0"


@pytest.mark.parametrize("batch_size,drop_last", [(16, False), (16, True), (7, False)])
def test_len_is_the_true_number_of_batches(source, batch_size, drop_last):
    loader = StreamingDataModule(train=source, batch_size=batch_size, drop_last=drop_last).train_dataloader()
    expected = 1000 // batch_size if drop_last else math.ceil(1000 / batch_size)
    assert len(loader) == expected == sum(1 for _ in loader)


def test_one_parquet_file_keeps_both_workers_busy(data_dir):
    def tag_worker(batch):
        info = torch.utils.data.get_worker_info()
        return {"worker": [info.id] * len(batch["id"])}

    dm = StreamingDataModule(
        train=os.path.join(data_dir, "one.parquet"), transform=tag_worker, batch_size=10, num_workers=2
    )
    workers = [w for b in epoch_batches(dm) for w in b["worker"].tolist()]
    assert len(workers) == 1000
    assert workers.count(0) == workers.count(1) == 500


def test_trainer_sees_length_progress_total_and_steps(tmp_path, data_dir):
    files = os.path.join(data_dir, "pq", "train-*.parquet")
    dm = StreamingDataModule(train=Source(path="parquet", data_files=files), batch_size=32)
    rec = BatchRecorder()
    t = cpu_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[rec], accumulate_grad_batches=2)
    t.fit(IdModel(), datamodule=dm)
    assert t.num_training_batches == math.ceil(sum(PARQUET_SIZES) / 32) == 32
    assert t.estimated_stepping_batches == 32  # 2 epochs x 32 batches / 2 accumulation
    assert len(rec.batches) == 64
    for epoch in (0, 1):
        ids = sorted(i for e, b in rec.batches if e == epoch for i in b)
        assert ids == list(range(1000))


def test_progress_bar_has_a_total(tmp_path, data_dir):
    from lightning.pytorch.callbacks import TQDMProgressBar

    totals = []

    class Bar(TQDMProgressBar):
        def on_train_epoch_start(self, trainer, *args):
            super().on_train_epoch_start(trainer, *args)
            totals.append(self.train_progress_bar.total)

    dm = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=100)
    t = cpu_trainer(enable_progress_bar=True, max_epochs=1, callbacks=[Bar()], default_root_dir=str(tmp_path))
    t.fit(IdModel(), datamodule=dm)
    assert totals == [10]


def test_every_epoch_is_complete_and_fresh_under_the_trainer(tmp_path, source):
    dm = StreamingDataModule(
        train=source, batch_size=50, num_workers=2, persistent_workers=True, buffer_size=200, seed=4
    )
    rec = BatchRecorder()
    cpu_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[rec]).fit(IdModel(), datamodule=dm)
    orders = [[i for e, b in rec.batches if e == epoch for i in b] for epoch in range(3)]
    for ids in orders:
        assert sorted(ids) == list(range(1000))
    assert orders[0] != orders[1] != orders[2]


def test_filter_shrinks_batches_but_keeps_the_step_count(source):
    dm = StreamingDataModule(train=source, filter=lambda b: [i % 3 != 0 for i in b["id"]], batch_size=10, shuffle=False)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 100
    ids = [i for b in batches for i in b["id"].tolist()]
    assert ids == [i for i in range(1000) if i % 3 != 0]
    assert loader.stats.filtered == 334


def test_batch_emptied_by_the_filter_is_still_a_step(source):
    """len() stays true: an emptied training batch is an EmptyBatch, not a missing step."""
    dm = StreamingDataModule(
        train=source, filter=Filter(lambda r: r["id"] >= 20, batched=False), batch_size=10, shuffle=False
    )
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 100
    assert [type(b) for b in batches[:2]] == [EmptyBatch, EmptyBatch] and not batches[0]
    assert batches[2]["id"][0].item() == 20
    assert loader.stats.filtered == 20
    with pytest.raises(KeyError, match="empty_step_loss"):
        batches[0]["id"]


def test_emptied_steps_are_skipped_by_lightning_on_one_device(tmp_path, source):
    seen = []

    class Model(IdModel):
        def training_step(self, batch, batch_idx):
            if isinstance(batch, EmptyBatch):
                return empty_step_loss(self)  # None on one device: Lightning skips the step
            seen.extend(batch["id"].tolist())
            return super().training_step(batch, batch_idx)

    dm = StreamingDataModule(
        train=source, filter=Filter(lambda r: r["id"] % 100 >= 30, batched=False), batch_size=10, shuffle=False
    )
    trainer = cpu_trainer(default_root_dir=str(tmp_path), max_epochs=1)
    model = Model()
    trainer.fit(model, datamodule=dm)
    assert seen == [i for i in range(1000) if i % 100 >= 30]
    assert trainer.fit_loop.epoch_loop.batch_progress.current.processed == 100
    # SGD on (w - 1)^2 from 0: 1 - 0.98^k after k updates; the 30 emptied steps updated nothing.
    assert model.w.item() == pytest.approx(1 - 0.98**70, rel=1e-5)


def test_validation_loader_reads_everything_in_order(tmp_path, data_dir):
    seen = []

    class Val(IdModel):
        def validation_step(self, batch, batch_idx):
            seen.extend(batch["id"].tolist())

    dm = StreamingDataModule(
        train=os.path.join(data_dir, "disk"),
        val=os.path.join(data_dir, "one.parquet"),
        batch_size=64,
        val_batch_size=100,
    )
    cpu_trainer(default_root_dir=str(tmp_path), max_epochs=2, num_sanity_val_steps=0).fit(Val(), datamodule=dm)
    assert seen == list(range(1000)) * 2


def test_nothing_is_materialised(data_dir):
    """A worker holds at most its cache of decoded row groups, bounded by two shuffle windows and a
    row group more for each (a window's rows may lie in one more row group than they fill)."""
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=os.path.join(data_dir, "pq", "*.parquet")),
        batch_size=10,
        buffer_size=100,
    )
    loader = dm.train_dataloader()
    store = loader.dataset.store
    peak = 0
    for _ in loader:
        peak = max(peak, sum(t.num_rows for t in store._cache.values()))
    assert 0 < peak <= 2 * 100 + 2 * 64


def test_numpy_batch_format_gives_arrays_to_the_transform(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "tokens.parquet")
    pq.write_table(
        pa.table({"id": list(range(100)), "input_ids": [[i, i + 1, i + 2] for i in range(100)], "text": ["t"] * 100}),
        path,
    )
    seen = {}

    def shift(batch):
        seen.update({k: type(v) for k, v in batch.items()})
        return {"labels": batch["input_ids"] + 1}

    dm = StreamingDataModule(
        train=path,
        transform=shift,
        filter=lambda b: b["id"] % 2 == 0,
        batch_size=10,
        shuffle=False,
        batch_format="numpy",
    )
    batch = next(iter(dm.train_dataloader()))
    assert seen == {"id": np.ndarray, "input_ids": np.ndarray, "text": list}
    assert batch["id"].tolist() == [0, 2, 4, 6, 8]
    assert batch["labels"].tolist() == [[i + 1, i + 2, i + 3] for i in (0, 2, 4, 6, 8)]


def test_loader_defaults_suit_the_trainer(data_dir):
    path = os.path.join(data_dir, "disk")
    dm = StreamingDataModule(train=path, num_workers=2)
    dm.trainer = cpu_trainer(devices=1)
    loader = dm.train_dataloader()
    assert loader.persistent_workers  # no worker restart per epoch or per validation run
    assert not loader.pin_memory  # nothing to pin for a CPU run, even on a machine with CUDA
    assert not StreamingDataModule(train=path, num_workers=0).train_dataloader().persistent_workers
    assert StreamingDataModule(train=path, num_workers=2, pin_memory=True).train_dataloader().pin_memory


def test_persistent_workers_stop_with_the_fit_and_the_datamodule_pickles(data_dir, tmp_path):
    import pickle

    from lightning_stream.testing import IdModel

    class WithVal(IdModel):
        def validation_step(self, batch, batch_idx):
            return None

    dm = StreamingDataModule(
        train=os.path.join(data_dir, "disk"), val=os.path.join(data_dir, "disk"), batch_size=50, num_workers=2
    )
    trainer = cpu_trainer(max_steps=3, limit_val_batches=2, default_root_dir=str(tmp_path))
    trainer.fit(WithVal(), datamodule=dm)
    loaders = list(dm._loaders)
    assert len(loaders) == 2 and all(loader.persistent_workers for loader in loaders)
    assert all(loader._iterator is None for loader in loaders)  # teardown stopped the workers
    dm.trainer = None  # the trainer pickles its own way; the datamodule with live loaders must pickle too
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.train_loader is None and len(epoch_batches(clone)) == len(dm.train_dataloader())
