"""Weighted mixtures: exact realised proportions, both stopping strategies, exact resume."""

import os
from collections import Counter

import pytest
from conftest import write_parquet

from lightning_stream import Mix, Source, StreamingDataModule
from lightning_stream.stores.mixture import mixture_counts
from lightning_stream.testing import assert_resume_equivalent


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    # ids encode the source: 0..299 from "a", 1000..1599 from "b", 2000..2099 from "c"
    paths = []
    for name, start, n in (("a", 0, 300), ("b", 1000, 600), ("c", 2000, 100)):
        path = os.path.join(str(root), f"{name}.parquet")
        write_parquet(path, start, start + n, row_group_size=32)
        paths.append(path)
    return paths


def test_counts_follow_the_strategies():
    assert mixture_counts([300, 600, 100], [0.5, 0.3, 0.2], "first_exhausted") == [250, 150, 100]
    assert mixture_counts([300, 600, 100], [0.5, 0.3, 0.2], "all_exhausted") == [1000, 600, 400]


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
def test_epoch_realises_the_mixture(three_sources, strategy):
    mix = Mix(three_sources, probabilities=[0.5, 0.3, 0.2], stopping_strategy=strategy)
    loader = StreamingDataModule(train=mix, batch_size=20, buffer_size=64).train_dataloader()
    ids = [i for b in loader for i in b["id"].tolist()]
    per_source = Counter(i // 1000 for i in ids)
    expected = mixture_counts([300, 600, 100], [0.5, 0.3, 0.2], strategy)
    assert [per_source[k] for k in range(3)] == expected
    assert len(loader) == -(-sum(expected) // 20)
    if strategy == "first_exhausted":
        assert len(ids) == len(set(ids))  # nothing repeated
    else:
        assert set(ids) == set(range(300)) | set(range(1000, 1600)) | set(range(2000, 2100))  # everything seen
    # interleaved, not concatenated: every quarter of the epoch has rows from every source
    quarter = len(ids) // 4
    for q in range(4):
        assert len({i // 1000 for i in ids[q * quarter : (q + 1) * quarter]}) == 3


@pytest.mark.parametrize(
    "strategy,num_workers,shuffle",
    [
        ("first_exhausted", 2, True),
        ("all_exhausted", 0, True),
        ("first_exhausted", 0, False),
        ("all_exhausted", 2, False),
    ],
)
def test_mixture_resume_is_exact(tmp_path, three_sources, strategy, num_workers, shuffle):
    def make():
        mix = Mix(
            [Source(path="parquet", data_files=p) for p in three_sources],
            probabilities=[0.5, 0.3, 0.2],
            stopping_strategy=strategy,
        )
        return StreamingDataModule(
            train=mix, batch_size=16, num_workers=num_workers, shuffle=shuffle, buffer_size=64, seed=8
        )

    report = assert_resume_equivalent(make, stop_at_step=40, tmp_path=str(tmp_path), max_epochs=3)
    assert len(report.after_resume) > 0


def test_mixture_of_different_columns_is_refused(three_sources, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"id": [1, 2], "caption": ["x", "y"]}), other)
    with pytest.raises(ValueError, match="same columns"):
        StreamingDataModule(train=Mix([three_sources[0], other])).train_dataloader()


def test_mix_from_yaml_and_counts_logged(tmp_path, three_sources):

    from lightning_stream.cli import StreamingCLI

    config = tmp_path / "mix.yaml"
    config.write_text(
        "model:\n  class_path: lightning_stream.testing.IdModel\n"
        "trainer: {accelerator: cpu, max_epochs: 1, logger: false, enable_checkpointing: false, enable_progress_bar: false}\n"
        "data:\n  batch_size: 50\n  train:\n    class_path: lightning_stream.Mix\n    init_args:\n"
        f"      sources: {list(three_sources)}\n      probabilities: [0.5, 0.3, 0.2]\n      stopping_strategy: all_exhausted\n"
    )
    cli = StreamingCLI(args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("data/mix_rows/")}
    assert sorted(m.values()) == [400.0, 600.0, 1000.0]
