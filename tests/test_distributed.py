"""Real multi-process runs (gloo on CPU) under a hard timeout: even steps, exact validation, resume."""

import csv
import glob
import json
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_run.py")
pytestmark = pytest.mark.slow


def run(out, *args, timeout=240):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def batches(out, rank):
    with open(os.path.join(str(out), f"train-rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def epoch_ids(records, epoch):
    return [i for e, _, ids in records if e == epoch for i in ids]


@pytest.mark.parametrize("data", ["odd.parquet", "three", "jsonl"])
def test_uneven_data_even_steps_no_hang(tmp_path, uneven_dir, jsonl_dir, data):
    """One file, 3 files of 900/60/41 rows, and a stream of unknown length (ranks agree on its end)."""
    path = os.path.join(uneven_dir, data)
    if data == "jsonl":
        train = [os.path.join(jsonl_dir, "*.jsonl.gz")]
    else:
        train = sorted(glob.glob(os.path.join(path, "*.parquet"))) if os.path.isdir(path) else [path]
    run(tmp_path, "--train", *train, "--workers", 2, "--max-epochs", 2, "--batch-size", 16)
    r0, r1 = batches(tmp_path, 0), batches(tmp_path, 1)
    assert len(r0) == len(r1) == 2 * 32  # 1001 rows: 31 full steps of 2x16, then 9 rows split 5/4
    if data != "jsonl":  # a stream has no length; the others know it on every rank
        for rank in (0, 1):
            with open(tmp_path / f"meta-rank{rank}.json") as f:
                assert json.load(f) == {"num_training_batches": 32, "estimated_stepping_batches": 64}
    for epoch in (0, 1):
        ids = epoch_ids(r0, epoch) + epoch_ids(r1, epoch)
        assert len(ids) == len(set(ids))  # no row twice in an epoch
        assert 1001 - len(ids) <= 1  # at most world_size - 1 rows missed


def test_filter_that_empties_batches_on_one_rank_keeps_steps_even(tmp_path, data_dir):
    """Whole batches are emptied, more on one rank than the other: both take len() steps, no hang."""
    run(
        tmp_path,
        "--train",
        os.path.join(data_dir, "one.parquet"),
        "--workers",
        2,
        "--no-shuffle",
        "--max-epochs",
        1,
        "--filter-empty",
    )
    r0, r1 = batches(tmp_path, 0), batches(tmp_path, 1)
    with open(tmp_path / "meta-rank0.json") as f:
        steps = json.load(f)["num_training_batches"]
    assert len(r0) == len(r1) == steps == 50
    empty0, empty1 = (sum(1 for *_, ids in r if not ids) for r in (r0, r1))
    assert empty0 != empty1 and max(empty0, empty1) >= 5  # whole batches emptied, unevenly
    ids = epoch_ids(r0, 0) + epoch_ids(r1, 0)
    assert sorted(ids) == [i for i in range(1000) if not ((i // 10) % 2 == 1 and (i // 20) % 3 == 0)]


def test_the_largest_wait_across_ranks_is_logged_with_its_rank(tmp_path, data_dir):
    """Rank 1's transform is slow: rank 0's metrics.csv shows rank 1's wait as the largest."""
    run(tmp_path, "--train", os.path.join(data_dir, "one.parquet"), "--max-steps", 12, "--csv", "--batch-size", 10)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("data/wait_ms_max")]
    assert len(rows) >= 8
    assert all(float(r["data/wait_ms_max"]) >= float(r["data/wait_ms"]) for r in rows)
    assert sum(float(r["data/wait_ms_max_rank"]) == 1 for r in rows) >= len(rows) - 1
    assert min(float(r["data/wait_ms_max"]) for r in rows) >= 40


def test_validation_is_exact_across_ranks(tmp_path, uneven_dir, data_dir):
    val = os.path.join(uneven_dir, "odd.parquet")
    run(tmp_path, "--train", os.path.join(data_dir, "disk"), "--val", val, "--batch-size", 16, "--max-epochs", 1)
    with open(tmp_path / "val.json") as f:
        assert json.load(f)["val/mean"] == pytest.approx(sum(range(1001)) / 1001)


def test_ddp_resume_is_exact_rank_by_rank(tmp_path, data_dir):
    data = os.path.join(data_dir, "disk")
    common = ["--train", data, "--workers", 2, "--max-epochs", 2, "--batch-size", 16]
    run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "--max-steps", 20, "--ckpt-every", 20)
    run(tmp_path / "c", *common, "--resume", tmp_path / "b" / "ckpt" / "step=20.ckpt")
    for rank in (0, 1):
        assert batches(tmp_path / "b", rank) + batches(tmp_path / "c", rank) == batches(tmp_path / "a", rank)


def test_token_budget_steps_even_on_every_rank_and_exact_on_resume(tmp_path, data_dir):
    """batch_tokens under DDP: equal steps, each under budget, no row twice, <= 1% left out; the
    resumed run replays the uninterrupted one rank by rank."""
    common = ["--train", os.path.join(data_dir, "disk"), "--workers", 2, "--max-epochs", 2, "--batch-tokens", 512]
    run(tmp_path / "a", *common)
    r0, r1 = batches(tmp_path / "a", 0), batches(tmp_path / "a", 1)
    with open(tmp_path / "a" / "meta-rank0.json") as f:
        steps = json.load(f)["num_training_batches"]
    assert len(r0) == len(r1) == 2 * steps
    for epoch in (0, 1):
        ids = epoch_ids(r0, epoch) + epoch_ids(r1, epoch)
        assert len(ids) == len(set(ids)) and 1000 - len(ids) <= 10
    assert all(sum(8 + (i * 37) % 120 for i in ids) <= 512 for _, _, ids in r0 + r1)
    assert len(ids) / (2 * steps) > 5  # rows per step: packed, not one row a step
    run(tmp_path / "b", *common, "--max-steps", 20, "--ckpt-every", 20)
    run(tmp_path / "c", *common, "--resume", tmp_path / "b" / "ckpt" / "step=20.ckpt")
    for rank in (0, 1):
        assert batches(tmp_path / "b", rank) + batches(tmp_path / "c", rank) == batches(tmp_path / "a", rank)


def test_token_budget_steps_resume_on_another_world_size(tmp_path, data_dir):
    """The plan depends on the checkpoint's lanes, not on the world size: 2 ranks -> 1 rank."""
    common = ["--train", os.path.join(data_dir, "disk"), "--max-epochs", 1, "--batch-tokens", 512]
    run(tmp_path / "b", *common, "--devices", 2, "--max-steps", 15, "--ckpt-every", 15)
    run(tmp_path / "c", *common, "--devices", 1, "--workers", 2, "--resume", tmp_path / "b" / "ckpt" / "step=15.ckpt")
    seen = Counter()
    for out, world in ((tmp_path / "b", 2), (tmp_path / "c", 1)):
        for rank in range(world):
            seen.update(epoch_ids(batches(out, rank), 0))
    assert max(seen.values()) == 1 and len(seen) >= 990


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_elastic_resume_changes_world_size_and_workers(tmp_path, data_dir, before, after):
    data = os.path.join(data_dir, "disk")
    steps = 12 if before == 2 else 24  # 384 rows into epoch 0 either way
    run(
        tmp_path / "b",
        "--train",
        data,
        "--devices",
        before,
        "--workers",
        0,
        "--max-epochs",
        1,
        "--batch-size",
        16,
        "--max-steps",
        steps,
        "--ckpt-every",
        steps,
    )
    run(
        tmp_path / "c",
        "--train",
        data,
        "--devices",
        after,
        "--workers",
        2,
        "--max-epochs",
        1,
        "--batch-size",
        16,
        "--resume",
        tmp_path / "b" / "ckpt" / f"step={steps}.ckpt",
    )
    seen = Counter()
    for out, world in ((tmp_path / "b", before), (tmp_path / "c", after)):
        for rank in range(world):
            seen.update(epoch_ids(batches(out, rank), 0))
    assert set(seen) == set(range(1000)) and max(seen.values()) == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_over_loopback_train_and_resume(tmp_path, data_dir):
    data = os.path.join(data_dir, "disk")

    def torchrun(out, *extra):
        port = free_port()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    "2",
                    "--nproc_per_node",
                    "1",
                    "--node_rank",
                    str(node),
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    str(port),
                    SCRIPT,
                    "--out",
                    str(out),
                    "--train",
                    data,
                    "--devices",
                    "1",
                    "--num-nodes",
                    "2",
                    "--workers",
                    "1",
                    "--max-epochs",
                    "1",
                    "--batch-size",
                    "16",
                    *map(str, extra),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            for node in (0, 1)
        ]
        try:
            outs = [p.communicate(timeout=240)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]

    torchrun(tmp_path / "a")
    torchrun(tmp_path / "b", "--max-steps", 10, "--ckpt-every", 10)
    torchrun(tmp_path / "c", "--resume", tmp_path / "b" / "ckpt" / "step=10.ckpt")
    for rank in (0, 1):
        full = batches(tmp_path / "a", rank)
        assert len(full) == 32
        assert batches(tmp_path / "b", rank) + batches(tmp_path / "c", rank) == full


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    """1000 rows as eight gzipped JSON-lines shards: two for each of the 2 x 2 readers below."""
    import gzip

    root = tmp_path_factory.mktemp("eight")
    for i in range(8):
        with gzip.open(root / f"part-{i}.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps({"id": j, "text": f"row {j}"}) + "\n" for j in range(i * 125, (i + 1) * 125)))
    return str(root / "*.jsonl.gz")


def test_stream_shards_dealt_to_lanes_even_steps_and_exact_resume_rank_by_rank(tmp_path, eight_shards):
    """Each (rank, worker) reads its two shards; the ranks agree where the epoch ends; a resume is
    exact, and reads each lane from the shard its window begins in (each rank's, in rank 0's file)."""
    import torch

    common = ["--train", eight_shards, "--workers", 2, "--max-epochs", 2, "--batch-size", 16]
    run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "--max-steps", 20, "--ckpt-every", 20)
    run(tmp_path / "c", *common, "--resume", tmp_path / "b" / "ckpt" / "step=20.ckpt")
    (state,) = torch.load(tmp_path / "b" / "ckpt" / "step=20.ckpt", weights_only=True)["loops"]["fit_loop"][
        "state_dict"
    ]["combined_loader"]
    # 10 batches of 16 into each 250-row lane: the window of rows 128-191 begins in its 2nd shard.
    assert state["lanes"] == 4 and state["anchors"] == [[1, 125]] * 4
    r0, r1 = batches(tmp_path / "a", 0), batches(tmp_path / "a", 1)
    assert len(r0) == len(r1) == 2 * 32  # 4 lanes of 250 rows: 16 batches each (15 x 16 + 10), 2 per step
    for epoch in (0, 1):
        ids = epoch_ids(r0, epoch) + epoch_ids(r1, epoch)
        assert sorted(ids) == list(range(1000))
    for rank in (0, 1):
        assert batches(tmp_path / "b", rank) + batches(tmp_path / "c", rank) == batches(tmp_path / "a", rank)


def test_stream_lanes_of_unequal_lengths_end_on_the_same_step_on_every_rank(tmp_path):
    """Shards of 400/100/250/251 rows on 2 ranks x 2 workers: no hang, equal steps, no row twice."""
    import gzip

    sizes, start = (400, 100, 250, 251), 0
    for i, n in enumerate(sizes):
        with gzip.open(tmp_path / f"part-{i}.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps({"id": j}) + "\n" for j in range(start, start + n)))
        start += n
    run(
        tmp_path / "out", "--train", str(tmp_path / "*.jsonl.gz"), "--workers", 2, "--max-epochs", 2, "--batch-size", 16
    )
    r0, r1 = batches(tmp_path / "out", 0), batches(tmp_path / "out", 1)
    assert len(r0) == len(r1) > 0
    for epoch in (0, 1):
        ids = epoch_ids(r0, epoch) + epoch_ids(r1, epoch)
        assert len(ids) == len(set(ids)) and set(ids) <= set(range(1001))
        assert len(ids) >= 4 * 100 - 16  # at least every lane's rows up to the shortest lane's end
