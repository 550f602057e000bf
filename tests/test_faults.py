"""SIGKILL a real fit at random moments and resume each time: nothing lost, nothing repeated."""

import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_run.py")
pytestmark = pytest.mark.slow


def records(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill cut short
                break
    return out


def latest_checkpoint(directory):
    """The newest checkpoint that loads (a kill may have interrupted a write)."""
    found = []
    for path in glob.glob(os.path.join(directory, "*.ckpt")):
        m = re.search(r"step=(\d+)", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    for step, path in sorted(found, reverse=True):
        try:
            torch.load(path, weights_only=True, map_location="cpu")
            return step, path
        except Exception:  # noqa: BLE001 - an incomplete file: try the previous one
            continue
    return 0, None


def test_sigkill_at_random_moments_then_resume(tmp_path, data_dir):
    common = [
        "--train",
        os.path.join(data_dir, "disk"),
        "--devices",
        "1",
        "--workers",
        "2",
        "--max-epochs",
        "2",
        "--batch-size",
        "16",
        "--step-sleep",
        "0.02",
    ]
    full_out = tmp_path / "full"
    subprocess.run(
        [sys.executable, SCRIPT, "--out", str(full_out), *common], check=True, capture_output=True, timeout=300
    )
    full = records(full_out / "train-rank0.jsonl")
    assert len(full) == 126
    by_step = {step: (epoch, ids) for epoch, step, ids in full}

    rng = random.Random(1234)
    out, ckpt_dir = tmp_path / "faulty", tmp_path / "faulty" / "ckpt"
    kills, segments, resumed_from = 0, [], []
    while True:
        start_step, ckpt = latest_checkpoint(str(ckpt_dir))
        log = out / f"segment-{len(segments)}"
        args = [sys.executable, SCRIPT, "--out", str(log), *common, "--ckpt-every", "4"]
        proc = subprocess.Popen(
            args + (["--resume", ckpt] if ckpt else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        target = start_step + rng.randint(2, 12) if kills < 12 else None
        while proc.poll() is None:
            recs = records(log / "train-rank0.jsonl")
            if target is not None and recs and recs[-1][1] >= target:
                time.sleep(rng.uniform(0, 0.05))  # sometimes inside a step, sometimes inside a checkpoint write
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                break
            time.sleep(0.01)
        # Gather every segment's checkpoints where the next segment looks for the latest.
        os.makedirs(ckpt_dir, exist_ok=True)
        for f in glob.glob(str(log / "ckpt" / "*.ckpt")):
            os.replace(f, ckpt_dir / os.path.basename(f))
        segments.append(records(log / "train-rank0.jsonl"))
        resumed_from.append(start_step)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
        assert len(segments) < 40

    assert kills >= 10
    stitched = []
    for j, seg in enumerate(segments):
        assert not seg or seg[0][1] == resumed_from[j]  # each segment starts at its checkpoint's step
        end = resumed_from[j + 1] if j + 1 < len(segments) else None
        for epoch, step, ids in seg:
            assert by_step[step] == (epoch, ids)  # trained or replayed, every batch is the uninterrupted one
            if end is None or step < end:
                stitched.append([epoch, step, ids])
    assert stitched == full


def _children(pid):
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_sigkilled_training_process(tmp_path, data_dir):
    """The OOM killer or a preemption SIGKILLs the trainer: its 2 DataLoader workers go too."""
    args = [sys.executable, SCRIPT, "--out", str(tmp_path), "--train", os.path.join(data_dir, "disk")]
    args += ["--devices", "1", "--workers", "2", "--max-epochs", "50", "--batch-size", "16", "--step-sleep", "0.2"]
    args += ["--payload-kb", "40"]  # 640 KiB batches, sent by value: a worker blocks on the full pipe
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(records(tmp_path / "train-rank0.jsonl")) < 5:
            assert proc.poll() is None and time.time() < deadline, "the run did not start training"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"DataLoader workers {survivors} outlived the SIGKILLed training process"
