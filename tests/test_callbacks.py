"""The callback the datamodule installs: acknowledgement, data-wait metrics, starvation warning."""

import csv
import os
import statistics
import time
import warnings

import lightning.pytorch as pl
import pytest
from helpers import cpu_trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_stream import StreamingCallback, StreamingDataModule, default_collate
from lightning_stream.testing import IdModel


def slow(batch):
    time.sleep(0.02)  # a transform much slower than the step: the model waits for data
    return batch


def test_installed_once_and_reports_starvation(tmp_path, data_dir):
    dm = StreamingDataModule(train=os.path.join(data_dir, "disk"), transform=slow, batch_size=10)
    cb = StreamingCallback(warmup_steps=5)
    logged = {}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    t = cpu_trainer(max_steps=30, callbacks=[cb, Spy()], default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="waiting for data"):
        t.fit(IdModel(), datamodule=dm)
    assert sum(isinstance(c, StreamingCallback) for c in t.callbacks) == 1  # the user's, not a second one
    assert logged["data/wait_share"] > 0.5
    assert logged["data/wait_ms"] >= 15
    # The rate is the batch's rows over the step the callback timed (wait_ms / wait_share), and the
    # transform's sleep is inside every step (num_workers=0): at most 10 rows per 0.02 s on any machine.
    step_s = logged["data/wait_ms"] / 1000 / logged["data/wait_share"]
    assert logged["data/samples_per_sec"] == pytest.approx(10 / step_s, rel=1e-3)
    assert 0 < logged["data/samples_per_sec"] <= 10 / 0.02


def test_epoch_counts_are_logged(tmp_path, data_dir):
    dm = StreamingDataModule(
        train=os.path.join(data_dir, "disk"), filter=lambda b: [i % 2 == 0 for i in b["id"]], batch_size=100
    )
    t = cpu_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    t.fit(IdModel(), datamodule=dm)
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert m["data/rows_filtered"] == 500 and m["data/rows_skipped"] == 0 and m["data/rows_dropped"] == 0


def slow_collate(rows):
    time.sleep(0.03)
    return default_collate({k: [r[k] for r in rows] for k in rows[0]})


@pytest.mark.parametrize("num_workers", [0, 1])
def test_stage_times_show_a_slow_transform_and_a_slow_collate_in_metrics_csv(tmp_path, data_dir, num_workers):
    """The per-stage metrics reach a CSVLogger's metrics.csv and measure the real cost of each stage."""
    dm = StreamingDataModule(
        train=os.path.join(data_dir, "disk"),
        transform=slow,  # 20 ms a batch
        collate_fn=slow_collate,  # 30 ms a batch
        batch_size=10,
        num_workers=num_workers,
    )
    logger = CSVLogger(str(tmp_path), name="run")
    t = cpu_trainer(max_steps=12, logger=logger, log_every_n_steps=1, default_root_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(IdModel(), datamodule=dm)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    stages = ("read", "decode", "transform", "collate", "transfer")
    values = {s: [float(r[f"data/{s}_ms"]) for r in rows if r.get(f"data/{s}_ms")] for s in stages}
    assert all(len(v) >= 10 for v in values.values())
    assert min(values["transform"]) >= 20 and min(values["collate"]) >= 30
    assert statistics.median(values["transform"]) < statistics.median(values["collate"])
    assert statistics.median(values["read"]) < 20 and statistics.median(values["decode"]) < 20
