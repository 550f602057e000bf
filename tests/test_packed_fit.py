"""Token-budget steps + packed VLM batches through the data module, in a bf16-mixed fit on CPU,
and the packed example config (examples/vlm/packed.yaml) through the real CLI."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import cpu_trainer

from lightning_stream import Source, StreamingDataModule
from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform, load_processor
from lightning_stream.vlm.shapes_chat import TokensAndImages, VariedChatData, make_varied_chat_row

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "vlm")
ROWS = 32
BUDGET = 640
MAX_IMAGES = 8
MAX_LENGTH = 256


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The varied conversations (1-3 images, answers of very different lengths) with their
    ``num_tokens``, and the tiny VLM (32 px, 16 tokens an image)."""
    root = tmp_path_factory.mktemp("varied")
    model_dir = str(root / "model")
    out = VariedChatData(
        str(root / "data"),
        model_dir,
        num_rows=ROWS,
        val_rows=0,
        image_size=32,
        max_length=MAX_LENGTH,
        model_kwargs={"patch_size": 8},
    )()
    return os.path.join(out, "train-00000-of-00001.parquet"), model_dir


def test_varied_rows_have_one_to_three_images_and_exact_token_counts(varied) -> None:
    path, model_dir = varied
    table = pq.read_table(path).to_pylist()
    images = [len(row["images"]) for row in table]
    counts = np.array([row["num_tokens"] for row in table])
    assert set(images) == {1, 2, 3}
    assert counts.max() >= 2 * counts.min()  # lengths vary: the point of packing
    answers = [m["content"][-1]["text"] for row in table for m in row["messages"] if m["role"] == "assistant"]
    assert min(map(len, answers)) <= 6 and max(map(len, answers)) >= 80  # "red" ... a sentence per image
    # num_tokens is what the training transform makes of the row.
    transform = VLMTransform(model_dir, max_length=MAX_LENGTH)
    for row in table[:4]:
        out = transform({k: [v] for k, v in row.items()})
        assert len(out["input_ids"][0]) == row["num_tokens"]
    assert make_varied_chat_row(5, "train", 0, 32) == make_varied_chat_row(5, "train", 0, 32)  # pure
    assert TokensAndImages()(table[0]) == (table[0]["num_tokens"], images[0])


def test_bf16_packed_fit_through_the_data_module(varied, tmp_path) -> None:
    path, model_dir = varied
    pad_id = VLMCollator(model_dir)._pad_id()
    image_token = load_processor(model_dir).tokenizer.convert_tokens_to_ids("<image>")
    total = int(pq.read_table(path, columns=["num_tokens"]).column("num_tokens").to_numpy().sum())
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=path),
        transform=VLMTransform(model_dir, max_length=MAX_LENGTH),
        collate_fn=VLMCollator(model_dir, pack=True),
        batch_tokens=BUDGET,
        length=TokensAndImages(),
        max_images=MAX_IMAGES,
        batch_size=16,
        num_workers=1,
        buffer_size=ROWS,
    )
    seen: list[dict] = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
            self.steps = len(trainer.train_dataloader)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            ids = batch["input_ids"]
            cu = batch["cu_seq_lens_q"]
            seen.append(
                {
                    "shape": tuple(ids.shape),
                    "pads": int((ids == pad_id).sum()),
                    "rows": len(cu) - 1,
                    "cu_end": int(cu[-1]),
                    "restarts": int((batch["position_ids"][0] == 0).sum()),
                    "images": int(batch["pixel_values"].shape[0]),
                    "image_tokens": int((ids == image_token).sum()),
                    "mask": "attention_mask" in batch,
                    "loss": float(outputs["loss"]),
                }
            )

    record = Record()
    torch.manual_seed(0)
    module = VisionLanguageModel(model_dir, learning_rate=3e-3, warmup_ratio=0.0)
    trainer = cpu_trainer(precision="bf16-mixed", max_epochs=1, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)

    assert len(seen) == record.steps >= 5  # one epoch: the planned number of steps
    for step in seen:
        width = step["shape"][1]
        assert step["shape"][0] == 1 and width <= BUDGET  # one packed sequence within the budget
        assert step["pads"] == 0 and not step["mask"]  # no pad token, nothing to mask
        assert step["cu_end"] == width and step["restarts"] == step["rows"] >= 1
        assert step["images"] <= MAX_IMAGES and step["image_tokens"] == 16 * step["images"]
        assert np.isfinite(step["loss"])
    assert sum(s["shape"][1] for s in seen) == total  # every row once, its num_tokens exact
    assert sum(s["rows"] for s in seen) == ROWS
    after = dict(module.model.named_parameters())
    changed = [n for n, p in record.before.items() if not torch.equal(p, after[n].detach())]
    assert any("vision_tower" in n for n in changed) and any("language_model" in n for n in changed)


def test_packed_yaml_fits(tmp_path, monkeypatch) -> None:
    pytest.importorskip("lightning_stream.cli")
    from lightning_stream.cli import StreamingCLI

    monkeypatch.setattr("sys.argv", ["lightning-stream"])  # LightningCLI warns about pytest's arguments
    monkeypatch.chdir(tmp_path)  # the config's paths are relative: data/..., runs/vlm-packed
    StreamingCLI(
        args=[
            "fit",
            "--config",
            os.path.join(EXAMPLES, "packed.yaml"),
            "--data.prepare.init_args.num_rows=16",
            "--data.prepare.init_args.val_rows=8",
            "--data.prepare.init_args.image_size=32",
            "--data.batch_tokens=512",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert (tmp_path / "runs" / "vlm-packed" / "checkpoints" / "last.ckpt").is_file()
    assert pq.read_table(tmp_path / "data" / "shapes-varied" / "train-00000-of-00001.parquet").num_rows == 16
