"""Resume equivalence: the central promise, on real checkpoints written by real Trainer runs."""

import os

import lightning.pytorch as pl
import pytest
import torch
from helpers import cpu_trainer, epoch_ids

from lightning_stream import Source, StateMismatchError, StreamingDataModule
from lightning_stream.testing import BatchRecorder, IdModel, assert_resume_equivalent

# 1000 rows, batch 16 -> 63 steps per epoch; step 20 is mid epoch 0, step 150 mid epoch 2.
STEPS_PER_EPOCH = 63


@pytest.mark.parametrize("stop_at_step", [20, 150])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact(tmp_path, source, num_workers, shuffle, stop_at_step):
    def make():
        return StreamingDataModule(
            train=source, batch_size=16, num_workers=num_workers, shuffle=shuffle, buffer_size=100, seed=3
        )

    report = assert_resume_equivalent(make, stop_at_step=stop_at_step, tmp_path=str(tmp_path), max_epochs=3)
    assert len(report.uninterrupted) == 3 * STEPS_PER_EPOCH
    assert len(report.after_resume) == 3 * STEPS_PER_EPOCH - stop_at_step


def test_resume_with_persistent_workers_and_accumulation(tmp_path, data_dir):
    def make():
        return StreamingDataModule(
            train=os.path.join(data_dir, "disk"),
            batch_size=16,
            num_workers=2,
            persistent_workers=True,
            buffer_size=64,
            seed=5,
        )

    assert_resume_equivalent(make, stop_at_step=40, tmp_path=str(tmp_path), max_epochs=3, accumulate_grad_batches=2)


def test_resume_at_the_last_batch_of_an_epoch(tmp_path, data_dir):
    def make():
        return StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16, buffer_size=100)

    report = assert_resume_equivalent(make, stop_at_step=STEPS_PER_EPOCH, tmp_path=str(tmp_path), max_epochs=2)
    assert {e for e, _ in report.after_resume} == {1}


def test_resume_with_max_steps_and_lr_schedule_sized_from_length(tmp_path, source):
    """``estimated_stepping_batches`` in configure_optimizers runs before Lightning restores loops."""

    class Scheduled(IdModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=total),
            }

    def make():
        return StreamingDataModule(train=source, batch_size=16, num_workers=2, buffer_size=100)

    assert_resume_equivalent(make, make_model=Scheduled, stop_at_step=90, tmp_path=str(tmp_path), max_steps=140)


def fit_and_save(tmp_path, data_dir, steps):
    dm = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16)
    t = cpu_trainer(max_steps=steps, default_root_dir=str(tmp_path))
    t.fit(IdModel(), datamodule=dm)
    path = os.path.join(str(tmp_path), f"step{steps}.ckpt")
    t.save_checkpoint(path)
    return path


def test_checkpoint_holds_a_small_plain_state(tmp_path, data_dir):
    path = fit_and_save(tmp_path, data_dir, 10)
    ckpt = torch.load(path, weights_only=True)  # plain data only: no pickled objects
    # One copy, in Lightning's own loop state: not under the datamodule's class name.
    assert "StreamingDataModule" not in ckpt
    (state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["epoch"] == 0 and state["position"] == 160 and state["steps"] == 10
    assert all(isinstance(v, (int, str, bool, type(None))) for v in state.values())
    assert len(repr(state)) < 1000


def test_checkpoint_from_other_data_is_refused(tmp_path, data_dir):
    path = fit_and_save(tmp_path, data_dir, 5)

    other = StreamingDataModule(
        train=Source(path="parquet", data_files=os.path.join(data_dir, "one.parquet")), batch_size=16
    )
    t2 = cpu_trainer(max_steps=10, default_root_dir=str(tmp_path))
    with pytest.raises(StateMismatchError, match="other data"):
        t2.fit(IdModel(), datamodule=other, ckpt_path=path)

    reseeded = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16, seed=9)
    t3 = cpu_trainer(max_steps=10, default_root_dir=str(tmp_path))
    with pytest.raises(StateMismatchError, match="seed"):
        t3.fit(IdModel(), datamodule=reseeded, ckpt_path=path)


def test_loader_state_dict_without_trainer(data_dir):
    def loader():
        return StreamingDataModule(
            train=os.path.join(data_dir, "disk"), batch_size=10, num_workers=2, buffer_size=50
        ).train_dataloader()

    full = epoch_ids(loader(), per_batch=True)
    first = loader()
    it = iter(first)
    head = [next(it)["id"].tolist() for _ in range(37)]
    state = first.state_dict()
    first.shutdown_workers()  # mid-epoch: stopped now, not by the garbage collector
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + epoch_ids(resumed, per_batch=True) == full


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_resume_is_exact(tmp_path, jsonl_dir, num_workers, shuffle):
    """gzipped JSON lines have no random access: the shuffle window is rebuilt by reading."""

    def make():
        src = Source(path="json", data_files=os.path.join(jsonl_dir, "*.jsonl.gz"))
        return StreamingDataModule(
            train=src, batch_size=16, num_workers=num_workers, shuffle=shuffle, buffer_size=100, seed=2
        )

    report = assert_resume_equivalent(make, stop_at_step=80, tmp_path=str(tmp_path), max_epochs=2)
    assert len(report.uninterrupted) == 2 * 63
    for epoch in (0, 1):
        ids = [i for e, b in report.uninterrupted if e == epoch for i in b]
        assert sorted(ids) == list(range(1001))


def loader_of(data_dir, **kw):
    return StreamingDataModule(
        train=os.path.join(data_dir, "disk"), batch_size=10, buffer_size=50, seed=4, **kw
    ).train_dataloader()


def test_lanes_are_kept_from_the_checkpoint_on_another_topology(data_dir, caplog):
    """Written with 4 lanes (one process, 4 workers); resumed with 3 workers: same order, a warning about reads."""
    full = epoch_ids(loader_of(data_dir, num_workers=4), per_batch=True)
    first = loader_of(data_dir, num_workers=4)
    it = iter(first)
    head = [next(it)["id"].tolist() for _ in range(23)]
    state = first.state_dict()
    first.shutdown_workers()
    assert state["lanes"] == 4 and state["version"] == 2
    resumed = loader_of(data_dir, num_workers=3)
    with caplog.at_level("WARNING", logger="lightning_stream.loader"):
        resumed.load_state_dict(state)
    assert resumed.lanes == 4 and "not a multiple of the 3 readers" in caplog.text
    assert head + epoch_ids(resumed, per_batch=True) == full


def test_a_version_1_state_resumes_with_one_lane(data_dir):
    """Checkpoints written before lanes existed keep the order they were written with."""
    full = epoch_ids(loader_of(data_dir, num_workers=0), per_batch=True)  # one reader: one lane, the old order
    first = loader_of(data_dir, num_workers=0)
    it = iter(first)
    head = [next(it)["id"].tolist() for _ in range(31)]
    state = {k: v for k, v in first.state_dict().items() if k != "lanes"}
    state["version"] = 1
    resumed = loader_of(data_dir, num_workers=2)  # would pick 2 lanes on its own
    resumed.load_state_dict(state)
    assert resumed.lanes == 1
    assert head + epoch_ids(resumed, per_batch=True) == full


def test_another_batch_size_is_refused_when_lanes_interleave_by_batch(data_dir):
    state = loader_of(data_dir, num_workers=2).state_dict()
    other = StreamingDataModule(
        train=os.path.join(data_dir, "disk"), batch_size=12, buffer_size=50, seed=4, num_workers=2
    ).train_dataloader()
    with pytest.raises(StateMismatchError, match="batch size"):
        other.load_state_dict(state)


def test_explicit_lanes_cover_every_row_once_per_epoch(data_dir):
    ids = epoch_ids(loader_of(data_dir, num_workers=2, lanes=8))
    assert sorted(ids) == list(range(1000))
    with pytest.raises(ValueError, match="lanes"):
        loader_of(data_dir, lanes=0)


def test_strict_resume_false_resumes_through_trainer_fit_with_one_warning(tmp_path, data_dir, caplog):
    """The datamodule loads the state, then Lightning restores the loader from its own copy: both
    must apply strict_resume=False, and the second load of the same state is a no-op."""
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1, filename="{step}"
    )
    first = cpu_trainer(enable_checkpointing=True, max_steps=8, default_root_dir=str(tmp_path), callbacks=[saver])
    first.fit(IdModel(), datamodule=StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16))
    path = str(tmp_path / "ckpt" / "step=5.ckpt")  # mid epoch 0
    reseeded = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16, seed=9, strict_resume=False)
    recorder = BatchRecorder()
    t = cpu_trainer(max_steps=10, default_root_dir=str(tmp_path), callbacks=[recorder])
    with caplog.at_level("WARNING", logger="lightning_stream.state"):
        t.fit(IdModel(), datamodule=reseeded, ckpt_path=path)
    assert t.global_step == 10
    warnings = [r for r in caplog.records if "Resuming anyway" in r.getMessage()]
    assert len(warnings) == 1 and "the shuffle seed: checkpoint has 0, now 9" in warnings[0].getMessage()
    # It continued at the checkpoint's position (5 batches in), in the new seed's order.
    new_order = [
        tuple(b["id"].tolist())
        for b in StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16, seed=9).train_dataloader()
    ]
    assert [key for _, key in recorder.batches] == new_order[5:10]


def _mid_epoch_checkpoint(tmp_path, data_dir, cls=StreamingDataModule, steps=5):
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=steps, save_top_k=-1, filename="{step}"
    )
    t = cpu_trainer(enable_checkpointing=True, max_steps=steps + 1, default_root_dir=str(tmp_path), callbacks=[saver])
    t.fit(IdModel(), datamodule=cls(train=os.path.join(data_dir, "disk"), batch_size=16, num_workers=2))
    return str(tmp_path / "ckpt" / f"step={steps}.ckpt")


def test_resume_after_renaming_or_subclassing_the_datamodule_is_exact(tmp_path, data_dir):
    """The position is found whatever the datamodule's class is called (users subclass it later)."""

    class OldName(StreamingDataModule):
        pass

    class WithLabels(StreamingDataModule):
        def __init__(self, num_labels: int = 3, **kwargs):
            super().__init__(**kwargs)
            self.num_labels = num_labels

    made = []

    def make():
        made.append(1)
        cls = OldName if len(made) < 3 else WithLabels  # the resumed run uses the renamed subclass
        return cls(train=os.path.join(data_dir, "disk"), batch_size=16, num_workers=2, shuffle=True)

    report = assert_resume_equivalent(make, stop_at_step=7, tmp_path=str(tmp_path), max_epochs=2)
    assert len(report.after_resume) == 2 * 63 - 7


def test_a_mid_epoch_checkpoint_without_the_loader_state_is_refused(tmp_path, data_dir, caplog):
    path = _mid_epoch_checkpoint(tmp_path, data_dir)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    stripped = str(tmp_path / "stripped.ckpt")
    torch.save(ckpt, stripped)
    t = cpu_trainer(max_steps=8, default_root_dir=str(tmp_path))
    with pytest.raises(
        StateMismatchError,
        match=r"mid-epoch \(after batch 5 of epoch 0\) but holds no lightning_stream loader position",
    ):
        t.fit(
            IdModel(),
            datamodule=StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16),
            ckpt_path=stripped,
        )
    # strict_resume=False: a warning, and the epoch restarts from its first batch.
    recorder = BatchRecorder()
    t = cpu_trainer(max_steps=7, default_root_dir=str(tmp_path), callbacks=[recorder])
    with pytest.warns(UserWarning, match="restarting the epoch from its first batch"):
        t.fit(
            IdModel(),
            datamodule=StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16, strict_resume=False),
            ckpt_path=stripped,
        )
    first = next(iter(StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16).train_dataloader()))
    assert recorder.batches[0][1] == tuple(first["id"].tolist())


def _nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("position", "80", r"position='80' \(str\); expected an int >= 0"),
        ("steps", None, r"steps=None \(NoneType\); expected an int >= 0"),
        ("version", "1", r"version='1' \(str\); expected an int from 1 to 2"),
        ("position", 10**6, r"position=1000000, past the end of its 1000 rows"),
        ("anchors", [[0]], r"anchors=\[\[0\]\] \(list\); expected a list of \[shard, row\] pairs"),
        ("position", 10**100, r"position=1000000.*\(int\); expected an int >= 0"),
        ("steps", 2**63, r"steps=9223372036854775808 \(int\); expected an int >= 0"),
        ("fingerprint", "f" * 50_000_000, r"fingerprint='f{20,}\.\.\.f+' \(str\); expected a string of at most 256"),
        ("anchors", [[0, 1]] * 100_000, r"anchors=\[\[0, 1\], .*\.\.\.\] \(list\); expected a list of"),
        ("epoch", _nested(5000), r"epoch=\[\[\[\[\.\.\.\]\]\]\] \(list\); expected an int >= 0"),
    ],
)
def test_an_edited_checkpoint_state_is_refused_at_load_naming_the_key(data_dir, key, value, message):
    loader = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16).train_dataloader()
    state = loader.state_dict()
    with pytest.raises(StateMismatchError, match=message):
        loader.load_state_dict({**state, key: value})


def test_set_epoch_is_pushed_and_the_loader_moves_on_by_itself(data_dir):
    dm = StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=100)
    loader = dm.train_dataloader()
    first, second = [[b["id"].tolist() for b in loader] for _ in range(2)]
    assert first != second  # exhausting epoch 0 moved the loader to epoch 1
    assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["position"] == 0
    loader.set_epoch(1)
    assert [b["id"].tolist() for b in loader] == second
