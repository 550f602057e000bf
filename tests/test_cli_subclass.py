"""``lightning-stream`` with a datamodule subclass, two validation sets, a test set and linked arguments."""

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = """
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  num_sanity_val_steps: 0
  default_root_dir: {root}
model:
  class_path: cli_project.Classifier
  init_args:
    out: {root}
data:
  class_path: cli_project.GlueData
  init_args:
    tokenizer: my-org/tokenizer
    num_labels: 3
    batch_size: 8
    num_workers: 2
    train: {root}/train.parquet
    val:
      matched: {root}/matched.parquet
      mismatched: {root}/mismatched.parquet
    test: {root}/matched.parquet
"""


def cli(root, *args):
    env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_stream", *args, "--config", str(root / "run.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(root),
    )


@pytest.mark.slow
def test_a_subclass_two_validation_sets_and_a_test_set_from_yaml(tmp_path):
    for name, (a, b) in {"train": (0, 64), "matched": (100, 121), "mismatched": (200, 213)}.items():
        pq.write_table(pa.table({"id": list(range(a, b))}), str(tmp_path / f"{name}.parquet"))
    (tmp_path / "run.yaml").write_text(CONFIG.format(root=tmp_path))
    for stage in ("fit", "test"):
        proc = cli(tmp_path, stage)
        assert proc.returncode == 0, proc.stderr[-3000:]
    model = json.loads((tmp_path / "model.json").read_text())
    # batch_size and the tokenizer were given once, under data, and reached the model.
    assert model == {"batch_size": 8, "tokenizer": "my-org/tokenizer", "names": ["matched", "mismatched"]}
    seen = [json.loads(line) for line in open(tmp_path / "seen.jsonl")]
    count = lambda stage, idx: Counter(i for s, d, ids in seen if s == stage and d == idx for i in ids)  # noqa: E731
    assert count("val", 0) == Counter(range(100, 121)) and count("val", 1) == Counter(range(200, 213))
    assert count("test", 0) == Counter(range(100, 121))


def test_conflicting_linked_arguments_name_both(tmp_path):
    config = CONFIG.format(root=tmp_path).replace(
        f"    out: {tmp_path}", f"    out: {tmp_path}\n    tokenizer: other/tok"
    )
    (tmp_path / "run.yaml").write_text(config)
    proc = cli(tmp_path, "fit")
    assert proc.returncode != 0
    assert "model.tokenizer='other/tok' but data.tokenizer='my-org/tokenizer': give tokenizer once" in proc.stderr
