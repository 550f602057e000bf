"""Each VLM family people fine-tune, at toy size (real classes, random weights, built offline).

Per family: supervised labels decode to exactly the assistant texts plus end-of-turn; a later
answer token does not move earlier logits; the module's loss is the model's own; gradients
reach the vision tower; a short bf16-mixed fit through StreamingDataModule with a worker
learns. Batches mix rows with 0, 1 and 2 images and several turns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cpu_trainer
from PIL import Image

from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform
from lightning_stream.vlm.transform import IGNORE_INDEX
from lightning_stream.vlm.zoo import build_family

# family -> (what precedes an answer inside the assistant turn, the end-of-turn token)
FAMILIES = {
    "llava": ("", "<|end|>"),
    "llava_next": ("", "<|im_end|>"),
    "llava_onevision": ("", "<|im_end|>"),
    "qwen2_vl": ("", "<|im_end|>"),
    "qwen2_5_vl": ("", "<|im_end|>"),
    "qwen3_vl": ("", "<|im_end|>"),
    "idefics3": (" ", "<end_of_utterance>"),
    "smolvlm": (" ", "<end_of_utterance>"),
    "paligemma": ("", "<eos>"),
    "gemma3": ("", "<end_of_turn>"),
}
SINGLE_TURN = {"paligemma"}  # no chat format: one question, one answer per row


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, str(root / name)) for name in FAMILIES}


def picture(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def turn(role: str, text: str, images: int = 0) -> dict:
    return {"role": role, "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def rows(family: str) -> tuple[dict, list[list[str]]]:
    """A ``messages`` batch of rows with 2, 1 and 0 images, and each row's answers."""
    red, blue = picture((220, 30, 30)), picture((30, 60, 220), (30, 60))
    if family in SINGLE_TURN:
        messages = [
            [turn("user", "What color is the shape?", 2), turn("assistant", "red and blue")],
            [turn("user", "What color is the shape?", 1), turn("assistant", "red")],
            [turn("user", "Describe the picture."), turn("assistant", "blue circle")],
        ]
        answers = [["red and blue"], ["red"], ["blue circle"]]
    else:
        messages = [
            [
                turn("user", "Compare the two images.", 2),
                turn("assistant", "Both show a shape."),
                turn("user", "What color is the shape?"),
                turn("assistant", "red"),
            ],
            [turn("user", "What color is the shape?", 1), turn("assistant", "red")],
            [
                turn("system", "Answer briefly."),
                turn("user", "Describe the picture."),
                turn("assistant", "blue circle"),
                turn("user", "Where is it?"),
                turn("assistant", "left"),
            ],
        ]
        answers = [["Both show a shape.", "red"], ["red"], ["blue circle", "left"]]
    return {"messages": messages, "images": [[red, blue], [red], []]}, answers


def encoded(family_dirs, family: str) -> tuple[VLMTransform, list[dict], list[list[str]]]:
    transform = VLMTransform(family_dirs[family], max_length=512)
    batch, answers = rows(family)
    out = transform(batch)
    return transform, [{k: v[i] for k, v in out.items()} for i in range(3)], answers


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_labels_are_exactly_the_assistant_turns(family_dirs, family) -> None:
    transform, encoded_rows, answers = encoded(family_dirs, family)
    tokenizer = transform._lazy.tokenizer
    lead, end = FAMILIES[family]
    for row, expected in zip(encoded_rows, answers):
        assert len(row["labels"]) == len(row["input_ids"])
        supervised = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
        assert [row["labels"][i] for i in supervised] == [row["input_ids"][i] for i in supervised]
        text = tokenizer.decode([row["input_ids"][i] for i in supervised])
        assert text == "".join(f"{lead}{answer}{end}" for answer in expected)


def batch_of(family_dirs, family: str) -> dict[str, torch.Tensor]:
    _, encoded_rows, _ = encoded(family_dirs, family)
    return VLMCollator(family_dirs[family])(encoded_rows)


def module_of(family_dirs, family: str) -> VisionLanguageModel:
    torch.manual_seed(0)
    module = VisionLanguageModel(family_dirs[family])
    module.configure_model()
    return module


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_is_the_model_own_and_gradients_reach_the_vision_tower(family_dirs, family) -> None:
    batch = batch_of(family_dirs, family)
    assert batch["labels"].shape == batch["input_ids"].shape
    module = module_of(family_dirs, family)
    ours = module.training_step(batch, 0)
    theirs = module.model(**module._inputs(batch), labels=batch["labels"]).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    ours.backward()
    # The vision side: the tower and the projector that feeds its output to the LM
    # (Gemma 3 initialises that projection to zeros, so its tower gets none at step 0).
    vision = [
        p.grad
        for n, p in module.model.named_parameters()
        if any(k in n for k in ("vision", "visual", "projector", "connector"))
    ]
    assert vision and any(g is not None and g.abs().sum() > 0 for g in vision), "no gradient to vision"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_later_answer_token_does_not_move_earlier_logits(family_dirs, family) -> None:
    batch = batch_of(family_dirs, family)
    module = module_of(family_dirs, family).eval()
    row = 0  # two images (and, for chat families, two answers)
    answer = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
    last = int(answer[-1])
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][row, last] = (changed["input_ids"][row, last] + 1) % 100 + 10
    with torch.no_grad():
        before = module.model(**module._inputs(batch)).logits[row]
        after = module.model(**module._inputs(changed)).logits[row]
    earlier = answer[answer < last]
    torch.testing.assert_close(after[earlier], before[earlier])
    assert not torch.allclose(after[last], before[last])  # the change is seen where it may be


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_fit_through_the_streaming_data_module_learns(family_dirs, family, tmp_path) -> None:
    import datasets
    import lightning.pytorch as pl

    from lightning_stream import Source, StreamingDataModule
    from lightning_stream.vlm.shapes_chat import make_shape_chats

    data = make_shape_chats(str(tmp_path / "chat"), num_rows=8, val_rows=0, image_size=32)
    if family in SINGLE_TURN:  # one question, one answer: keep each row's first exchange
        table = datasets.load_dataset("parquet", data_files=data["train"], split="train")
        table = table.map(lambda r: {"messages": r["messages"][:2]})
        table.to_parquet(str(tmp_path / "single.parquet"))
        data = {"train": [str(tmp_path / "single.parquet")]}
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=data["train"]),
        transform=VLMTransform(family_dirs[family], max_length=256),
        collate_fn=VLMCollator(family_dirs[family]),
        batch_size=4,
        num_workers=1,
        buffer_size=8,
    )
    torch.manual_seed(0)
    module = VisionLanguageModel(family_dirs[family], learning_rate=3e-3, warmup_ratio=0.0)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = cpu_trainer(precision="bf16-mixed", max_epochs=4, callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.3, losses
