"""VisionLanguageModel: forward/backward, Trainer fit (bf16-mixed on CPU), metrics, predict."""

from __future__ import annotations

import math
import os

import lightning.pytorch as pl
import pytest
import torch
from helpers import cpu_trainer
from torch.utils.data import DataLoader

from lightning_stream.vlm import (
    VisionLanguageModel,
    VLMCollator,
    VLMTransform,
    build_tiny_vlm,
    make_shapes,
)
from lightning_stream.vlm.data import make_row
from lightning_stream.vlm.predict import load_checkpoint

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_vlm(str(tmp_path_factory.mktemp("vlm") / "model"), image_size=IMAGE_SIZE, patch_size=8)


class Rows(torch.utils.data.Dataset):
    """Shapes rows run through the transform one at a time (stands in for the data module)."""

    def __init__(self, model_dir: str, n: int, split: str = "train") -> None:
        self.rows = [make_row(i, split, 0, IMAGE_SIZE) for i in range(n)]
        self.transform = VLMTransform(model_dir, max_length=64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        out = self.transform({k: [v] for k, v in self.rows[i].items()})
        return {k: v[0] for k, v in out.items()} | {"id": i}


def loader(model_dir: str, n: int, split: str = "train", batch_size: int = 4) -> DataLoader:
    return DataLoader(Rows(model_dir, n, split), batch_size, collate_fn=VLMCollator(model_dir))


def test_forward_backward_on_a_collated_batch(model_dir: str) -> None:
    torch.manual_seed(0)
    module = VisionLanguageModel(model_dir)
    assert module.model is None  # nothing is built before configure_model
    module.configure_model()
    model = module.model
    module.configure_model()
    assert module.model is model  # idempotent
    batch = next(iter(loader(model_dir, 4)))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "vision_tower" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "language_model" in n)


def test_loss_matches_the_model_own_loss(model_dir: str) -> None:
    torch.manual_seed(0)
    module = VisionLanguageModel(model_dir)
    module.configure_model()
    batch = next(iter(loader(model_dir, 4)))
    ours = module.training_step(batch, 0)
    theirs = module.model(**{k: v for k, v in batch.items()}).loss
    torch.testing.assert_close(ours, theirs)


def test_freeze_vision_tower_and_gradient_checkpointing(model_dir: str) -> None:
    module = VisionLanguageModel(model_dir, freeze_vision_tower=True, gradient_checkpointing=True)
    module.configure_model()
    vision = [p for n, p in module.model.named_parameters() if "vision_tower" in n]
    assert vision and not any(p.requires_grad for p in vision)
    assert module.model.is_activation_checkpointing
    module.train()
    loss = module.training_step(next(iter(loader(model_dir, 2))), 0)
    loss.backward()
    assert all(p.grad is None for p in vision)


def test_warmup_then_cosine_schedule(model_dir: str) -> None:
    module = VisionLanguageModel(model_dir, learning_rate=1.0, warmup_ratio=0.1)
    module.configure_model()
    trainer = cpu_trainer(max_steps=100)
    module.trainer = trainer
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        config["optimizer"].step()
        scheduler.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0  # warmup over the first 10 steps
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[99] < 0.01  # cosine to zero


def test_short_fit_bf16_mixed_on_cpu_logs_metrics_and_predicts(model_dir, tmp_path) -> None:
    torch.manual_seed(0)
    module = VisionLanguageModel(model_dir, learning_rate=1e-3)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = cpu_trainer(
        enable_checkpointing=True,
        precision="bf16-mixed",
        max_steps=4,
        val_check_interval=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[checkpoints],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader(model_dir, 16), loader(model_dir, 8, "val"))
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/ppl", "val/answer_acc"} <= set(metrics)
    assert math.isfinite(metrics["val/loss"].item())
    assert metrics["val/ppl"].item() == pytest.approx(math.exp(metrics["val/loss"].item()), rel=1e-4)
    assert 0.0 <= metrics["val/answer_acc"].item() <= 1.0

    last = os.path.join(tmp_path, "ckpt", "last.ckpt")
    restored = load_checkpoint(last)
    for name, param in module.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[name], param)
    row = make_row(0, "val", 0, IMAGE_SIZE)
    answer = restored.generate_answer(row["image"], row["question"], max_new_tokens=3)
    assert isinstance(answer, str)


def test_validate_then_fit_reuses_metrics(model_dir: str) -> None:
    # Trainer.validate runs under inference mode; the metric reset there must not leave
    # inference tensors behind for the next fit's validation.
    module = VisionLanguageModel(model_dir)
    trainer = cpu_trainer(max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)
    val = loader(model_dir, 4, "val")
    first = trainer.validate(module, val, verbose=False)[0]["val/loss"]
    trainer.fit(module, loader(model_dir, 4), val)
    assert math.isfinite(first) and math.isfinite(trainer.callback_metrics["val/loss"].item())


def test_loads_weights_when_the_directory_has_them(model_dir: str, tmp_path) -> None:
    first = VisionLanguageModel(model_dir)
    first.configure_model()
    first.model.save_pretrained(tmp_path)
    for name in os.listdir(model_dir):  # processor files next to the weights
        if not os.path.exists(tmp_path / name):
            os.symlink(os.path.join(model_dir, name), tmp_path / name)
    pretrained = VisionLanguageModel(str(tmp_path))
    pretrained.configure_model()
    scratch = VisionLanguageModel(str(tmp_path), from_scratch=True)
    torch.manual_seed(123)
    scratch.configure_model()
    name, weight = next(iter(first.model.state_dict().items()))
    torch.testing.assert_close(pretrained.model.state_dict()[name], weight)
    assert not torch.equal(scratch.model.state_dict()[name], weight)


def test_shapes_rows_feed_the_model(model_dir: str, tmp_path) -> None:
    import datasets

    make_shapes(str(tmp_path), num_rows=8, val_rows=0, image_size=IMAGE_SIZE, num_shards=1)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "train-*.parquet"), split="train")
    out = VLMTransform(model_dir)(ds[:8])
    batch = VLMCollator(model_dir)([{k: v[i] for k, v in out.items()} for i in range(8)])
    module = VisionLanguageModel(model_dir)
    module.configure_model()
    assert torch.isfinite(module.training_step(batch, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_gpu_bf16(model_dir: str) -> None:
    module = VisionLanguageModel(model_dir, gradient_checkpointing=True)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, loader(model_dir, 12), loader(model_dir, 4, "val"))
    assert math.isfinite(trainer.callback_metrics["val/loss"].item())
    assert module.generate_answer(make_row(0, "val", 0, IMAGE_SIZE)["image"], "Where?") is not None


def test_an_emptied_step_trains_nothing_on_one_device(model_dir: str, tmp_path) -> None:
    """A step a filter emptied (EmptyBatch) returns None on one device: Lightning skips it."""
    from lightning_stream import EmptyBatch

    module = VisionLanguageModel(model_dir)
    module.configure_model()
    assert module.training_step(EmptyBatch(3), 0) is None
