"""Every Lightning stage: several named validation sets, test and predict, on 1 and 2 ranks."""

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cpu_trainer

from lightning_stream import Map, StreamingDataModule
from lightning_stream.testing import IdModel

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stages_run.py")
SIZES = {"train": 200, "matched": 61, "mismatched": 45}  # odd sizes: rows do not divide over ranks


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    start = 0
    for name, n in SIZES.items():
        pq.write_table(
            pa.table({"id": list(range(start, start + n))}), str(root / f"{name}.parquet"), row_group_size=16
        )
        start += 1000
    return str(root)


def _rows(name):
    start = 1000 * list(SIZES).index(name)
    return list(range(start, start + SIZES[name]))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_two_validation_sets_test_and_predict_read_every_row_once(tmp_path, stage_data, devices):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--data", stage_data, "--out", str(tmp_path), "--devices", str(devices)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for r in range(devices) for line in open(tmp_path / f"rank{r}.jsonl")]

    def seen(stage, idx):
        return Counter(i for s, d, ids in records if s == stage and d == idx for i in ids)

    assert seen("val", 0) == Counter(_rows("matched")) and seen("val", 1) == Counter(_rows("mismatched"))
    assert seen("test", 0) == Counter(_rows("matched"))
    predicted = [i for r in range(devices) for i in json.load(open(tmp_path / f"predict-rank{r}.json"))]
    assert predicted == _rows("mismatched")  # in order: ranks read contiguous runs, each in order
    assert json.load(open(tmp_path / "names.json")) == ["matched", "mismatched"]


def test_no_val_source_means_no_validation_loader(tmp_path, stage_data, recwarn):
    dm = StreamingDataModule(train=os.path.join(stage_data, "train.parquet"), batch_size=50)
    trainer = cpu_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    trainer.fit(IdModel(), datamodule=dm)
    assert trainer.global_step == 4 and trainer.val_dataloaders is None
    assert not [w for w in recwarn if "val" in str(w.message).lower() and "dataloader" in str(w.message).lower()]

    class Tested(IdModel):
        def test_step(self, batch, batch_idx):
            pass

    with pytest.raises(Exception, match="test_dataloader"):  # no test= source: Lightning's own message
        trainer.test(Tested(), datamodule=dm)


def test_eval_transform_and_collate_replace_the_train_ones(stage_data):
    def augment(batch):
        return {"id": [i + 10_000 for i in batch["id"]]}

    def prompts_only(rows):
        return {"prompt_ids": [r["id"] for r in rows]}

    dm = StreamingDataModule(
        train=os.path.join(stage_data, "train.parquet"),
        val=os.path.join(stage_data, "matched.parquet"),
        transform=augment,
        eval_transform=[],
        eval_collate_fn=prompts_only,
        batch_size=16,
    )
    assert next(iter(dm.train_dataloader()))["id"].min() >= 10_000
    assert [i for b in dm.val_dataloader() for i in b["prompt_ids"]] == _rows("matched")


def draw(batch):
    """Augmentation drawing from all three global RNGs, as transforms do."""
    import random

    import numpy as np
    import torch

    n = len(batch["id"])
    return {"py": [random.random() for _ in range(n)], "np": np.random.rand(n).tolist(), "pt": torch.rand(n).tolist()}


def draw_rng(batch, rng):
    return {"gen": rng.random(len(batch["id"])).tolist()}


def _draws(loader, skip=0):
    it = iter(loader)
    out = {}
    for b in it:
        for i, py, npv, pt, gen in zip(
            b["id"].tolist(), b["py"].tolist(), b["np"].tolist(), b["pt"].tolist(), b["gen"].tolist()
        ):
            out[i] = (py, npv, pt, gen)
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_random_transforms_draw_the_same_after_a_resume_and_with_any_workers(stage_data, num_workers):
    def make(workers):
        return StreamingDataModule(
            train=os.path.join(stage_data, "train.parquet"),
            transform=[draw, Map(draw_rng, with_rng=True)],
            batch_size=8,
            num_workers=workers,
            shuffle=True,
            buffer_size=64,
            lanes=2,  # the same order for any workers
        ).train_dataloader()

    reference = _draws(make(0))
    assert len(reference) == 200 and len({v[0] for v in reference.values()}) == 200  # real draws, not a constant
    loader = make(num_workers)
    it = iter(loader)
    head = [next(it) for _ in range(9)]
    resumed = make(num_workers)
    resumed.load_state_dict(loader.state_dict())
    after = _draws(resumed)
    assert after and all(after[i] == reference[i] for i in after)
    assert all(
        tuple(b[k][j].item() for k in ("py", "np", "pt", "gen")) == reference[b["id"][j].item()]
        for b in head
        for j in range(len(b["id"]))
    )
    # Another epoch draws other numbers.
    loader.set_epoch(1)
    assert _draws(loader) != reference
