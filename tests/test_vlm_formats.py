"""Every row layout (qa, LLaVA conversations, HF messages, the_cauldron) and a batch mixing
0, 1 and 2 images: each assistant turn supervised, nothing else; the loss is the model's own;
no row dropped; bad rows named."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform
from lightning_stream.vlm.transform import IGNORE_INDEX
from lightning_stream.vlm.zoo import build_family

RED, BLUE = Image.new("RGB", (20, 20), (220, 30, 30)), Image.new("RGB", (30, 20), (30, 60, 220))

# format -> (batch of 3 rows with 2, 1 and 0 images, each row's answers)
FORMATS = {
    "qa": (
        {
            "image": [[RED, BLUE], RED, None],
            "question": ["Compare?", "What color?", "Hi?"],
            "answer": ["both", ["red", "crimson"], "hello"],
        },
        [["both"], ["red"], ["hello"]],
    ),
    "llava": (
        {
            "image": [[RED, BLUE], RED, None],
            "conversations": [
                [
                    {"from": "human", "value": "<image>\n<image>\nCompare the two images."},
                    {"from": "gpt", "value": "Both show a shape."},
                    {"from": "human", "value": "What color is the shape?"},
                    {"from": "gpt", "value": "red"},
                ],
                [{"from": "human", "value": "What color is the shape?"}, {"from": "gpt", "value": "red"}],
                [
                    {"from": "system", "value": "Answer briefly."},
                    {"from": "human", "value": "Describe the picture."},
                    {"from": "gpt", "value": "blue circle"},
                ],
            ],
        },
        [["Both show a shape.", "red"], ["red"], ["blue circle"]],
    ),
    "messages": (
        {
            "images": [[RED, BLUE], [RED], []],
            "messages": [
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "Compare."}, {"type": "image"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": "Both show a shape."}]},
                    {"role": "user", "content": "Where is it?"},
                    {"role": "assistant", "content": "left"},
                ],
                [
                    {
                        "role": "user",
                        "content": [{"type": "image", "text": None}, {"type": "text", "text": "What color?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                ],
                [{"role": "user", "content": "Describe the picture."}, {"role": "assistant", "content": "blue circle"}],
            ],
        },
        [["Both show a shape.", "left"], ["red"], ["blue circle"]],
    ),
    "cauldron": (
        {
            "images": [[RED, BLUE], [RED], []],
            "texts": [
                [
                    {"user": "Compare the two images.", "assistant": "Both show a shape.", "source": "x"},
                    {"user": "What color is the shape?", "assistant": "red", "source": "x"},
                ],
                [{"user": "What color?", "assistant": "red", "source": "x"}],
                [{"user": "Describe the picture.", "assistant": "blue circle", "source": "x"}],
            ],
        },
        [["Both show a shape.", "red"], ["red"], ["blue circle"]],
    ),
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> str:
    return build_family("qwen2_vl", str(tmp_path_factory.mktemp("qwen") / "m"))


@pytest.fixture(scope="module")
def module(qwen) -> VisionLanguageModel:
    torch.manual_seed(0)
    module = VisionLanguageModel(qwen)
    module.configure_model()
    return module


def answers_of(transform: VLMTransform, out: dict) -> list[str]:
    tokenizer = transform._lazy.tokenizer
    return [
        tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
        for ids, labels in zip(out["input_ids"], out["labels"])
    ]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_supervises_every_assistant_turn(qwen, module, fmt) -> None:
    batch, answers = FORMATS[fmt]
    transform = VLMTransform(qwen)
    out = transform(batch)
    assert len(out["input_ids"]) == 3  # no row dropped
    assert answers_of(transform, out) == ["".join(a + "<|im_end|>" for a in row) for row in answers]
    image_id = transform._lazy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = [None if g is None else len(g) for g in out["image_grid_thw"]]
    assert grid == [2, 1, None] and image_id not in out["input_ids"][2]
    collated = VLMCollator(qwen)([{k: v[i] for k, v in out.items()} for i in range(3)])
    assert collated["image_grid_thw"].shape == (3, 3)
    ours = module.training_step(collated, 0)
    theirs = module.model(**module._inputs(collated), labels=collated["labels"]).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_batch_mixing_formats_rows_and_text_only_first(qwen, module) -> None:
    rows = []
    for fmt in ("messages", "llava", "cauldron", "qa"):
        batch, _ = FORMATS[fmt]
        out = VLMTransform(qwen)(batch)
        rows += [{k: v[i] for k, v in out.items()} for i in (2, 0, 1)]  # text-only row first
    collated = VLMCollator(qwen)(rows)
    assert collated["input_ids"].shape[0] == 12
    # Every image of every row arrives, whatever the first row has.
    assert collated["image_grid_thw"].shape[0] == 4 * 3
    assert collated["pixel_values"].shape[0] == int(collated["image_grid_thw"].prod(-1).sum())
    ours = module.training_step(collated, 0)
    theirs = module.model(**module._inputs(collated), labels=collated["labels"]).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_format_and_columns_can_be_named(qwen) -> None:
    batch = {"pics": [[RED]], "dialog": [[{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "red"}]]}
    transform = VLMTransform(qwen, format="llava", conversation_column="dialog", image_column="pics")
    out = transform(batch)
    assert answers_of(transform, out) == ["red<|im_end|>"]
    auto = VLMTransform(qwen, conversation_column="dialog", image_column="pics")
    assert auto(batch)["input_ids"] == out["input_ids"]


def test_truncation_drops_whole_turns_from_the_end_and_keeps_images(qwen) -> None:
    batch, _ = FORMATS["llava"]
    full = VLMTransform(qwen, max_length=None)(batch)
    first = VLMTransform(qwen, max_length=len(full["input_ids"][0]) - 3)(batch)
    transform = VLMTransform(qwen)
    assert answers_of(transform, first)[0] == "Both show a shape.<|im_end|>"
    image_id = transform._lazy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert first["input_ids"][0].count(image_id) == full["input_ids"][0].count(image_id)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"images": [[RED]], "messages": [[{"role": "user", "content": "Hi"}]]}, "no assistant turn"),
        (
            {
                "image": [[RED, BLUE]],
                "conversations": [[{"from": "human", "value": "<image> a"}, {"from": "gpt", "value": "b"}]],
            },
            "1 image mark(s) but 2 image(s)",
        ),
        ({"images": [[RED]], "messages": [[{"role": "robot", "content": "Hi"}]]}, "unknown role 'robot'"),
        (
            {"image": [RED], "conversations": [[{"from": "human", "value": ["a"]}]]},
            "text column 'conversations': row 0: expected a string, got list",
        ),
        ({"pictures": [RED], "prompt": ["q"]}, "cannot tell the row format"),
        (
            {"images": [[12]], "messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]},
            "image column 'images': unsupported image type int; at row 0",
        ),
    ],
)
def test_bad_rows_are_named(qwen, batch, message) -> None:
    with pytest.raises(ValueError) as info:
        VLMTransform(qwen)(batch)
    assert message in str(info.value)


def test_paligemma_refuses_multi_turn_rows(tmp_path) -> None:
    path = build_family("paligemma", str(tmp_path / "pg"))
    batch, _ = FORMATS["llava"]
    with pytest.raises(ValueError, match="PaliGemma has no chat format"):
        VLMTransform(path)(batch)


def test_a_first_batch_without_supervised_tokens_is_an_error(qwen, module) -> None:
    out = VLMTransform(qwen)(FORMATS["qa"][0])
    rows = [{k: v[i] for k, v in out.items()} for i in range(3)]
    for row in rows:
        row["labels"] = [IGNORE_INDEX] * len(row["labels"])
    with pytest.raises(ValueError, match="no supervised token in the batch"):
        module.training_step(VLMCollator(qwen)(rows), 0)
