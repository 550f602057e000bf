"""The ``lightning-stream`` command on the quickstart config: it learns, and ``--ckpt_path last`` resumes exactly."""

import csv
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "quickstart.yaml")


def fit(cwd, *args):
    cmd = [
        sys.executable,
        "-m",
        "lightning_stream",
        "fit",
        "--config",
        CONFIG,
        "--trainer.enable_progress_bar=false",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def recorded(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_quickstart_learns_and_resumes_from_last(tmp_path):
    small = ["--data.prepare.init_args.num_rows=1000", "--data.batch_size=16", "--trainer.val_check_interval=1.0"]
    rec = "--trainer.callbacks+=lightning_stream.testing.BatchRecorder"

    # Uninterrupted: 2 epochs of 63 steps.
    a = tmp_path / "a"
    a.mkdir()
    fit(a, *small, "--trainer.max_epochs=2", rec, f"--trainer.callbacks.path={a / 'batches.jsonl'}")
    rows = list(csv.DictReader(open(glob.glob(str(a / "runs/quickstart/lightning_logs/version_0/metrics.csv"))[0])))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert train[-1] < 0.6 * train[0] and val[-1] < val[0], (train[:3], train[-3:], val)

    # Interrupted at step 50 (mid epoch 0), then resumed with --ckpt_path last.
    b = tmp_path / "b"
    b.mkdir()
    fit(
        b,
        *small,
        "--trainer.max_epochs=2",
        "--trainer.max_steps=50",
        rec,
        f"--trainer.callbacks.path={b / 'before.jsonl'}",
    )
    assert os.path.exists(b / "runs/quickstart/checkpoints/last.ckpt")
    fit(b, *small, "--trainer.max_epochs=2", "--ckpt_path=last", rec, f"--trainer.callbacks.path={b / 'after.jsonl'}")

    full = recorded(a / "batches.jsonl")
    before, after = recorded(b / "before.jsonl"), recorded(b / "after.jsonl")
    assert len(full) == 126 and len(before) == 50
    assert before + after == full
