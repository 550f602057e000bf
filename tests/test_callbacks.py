"""The callback the datamodule installs: acknowledgement, data-wait metrics, starvation warning."""

import os
import time

import lightning.pytorch as pl
import pytest
from helpers import cpu_trainer

from lightning_stream import StreamingCallback, StreamingDataModule
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
