"""VLMCollator: dynamic padding, stacking, and ignoring columns it does not know."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_stream.vlm import VLMCollator, VLMTransform, build_tiny_vlm


def rows() -> list[dict]:
    return [
        {
            "input_ids": [5, 6, 7, 8],
            "attention_mask": [1, 1, 1, 1],
            "labels": [-100, -100, 7, 8],
            "pixel_values": np.ones((1, 3, 4, 4), np.float32),  # one image
            "image": Image.new("RGB", (4, 4)),
            "question": "What?",
            "answer": "red",
            "id": 3,
        },
        {
            "input_ids": [5, 6],
            "attention_mask": [1, 1],
            "labels": [-100, 6],
            "pixel_values": np.zeros((1, 3, 4, 4), np.float32),
            "image": Image.new("RGB", (4, 4)),
            "question": "Where?",
            "answer": "left",
            "id": 4,
        },
    ]


def test_pads_to_longest_row_and_drops_unknown_keys() -> None:
    batch = VLMCollator(pad_token_id=0)(rows())
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 6, -100, -100]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"][0].eq(1).all() and batch["pixel_values"][1].eq(0).all()
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long


def test_pad_to_multiple_of() -> None:
    batch = VLMCollator(pad_token_id=9, pad_to_multiple_of=8)(rows())
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [5, 6] + [9] * 6
    assert batch["labels"][0, 4:].eq(-100).all()


def test_left_padding() -> None:
    batch = VLMCollator(pad_token_id=0, padding_side="left")(rows())
    assert batch["input_ids"][1].tolist() == [0, 0, 5, 6]
    assert batch["attention_mask"][1].tolist() == [0, 0, 1, 1]


def test_varying_image_tiles_are_zero_padded() -> None:
    data = rows()
    data[0]["pixel_values"] = np.ones((1, 3, 3, 4, 4), np.float32)  # 1 image of 3 tiles
    data[1]["pixel_values"] = np.ones((1, 1, 3, 4, 4), np.float32)  # 1 image of 1 tile
    batch = VLMCollator(pad_token_id=0)(data)
    assert batch["pixel_values"].shape == (2, 3, 3, 4, 4)
    assert batch["pixel_values"][1, 1:].eq(0).all() and batch["pixel_values"][1, 0].eq(1).all()


def test_images_concatenate_over_rows_with_0_1_2_images() -> None:
    data = rows()
    data[0]["pixel_values"] = np.ones((2, 3, 4, 4), np.float32)  # two images
    data[0]["image_grid_thw"] = np.array([[1, 2, 2], [1, 2, 2]])
    data[1]["pixel_values"] = None  # text only
    data.append(
        dict(
            data[1],
            pixel_values=np.full((1, 3, 4, 4), 2, np.float32),
            image_grid_thw=np.array([[1, 2, 2]]),
            batch_num_images=np.array([1]),
        )
    )
    batch = VLMCollator(pad_token_id=0)(data)
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["pixel_values"][2].eq(2).all()
    assert batch["image_grid_thw"].shape == (3, 3)
    assert batch["batch_num_images"].tolist() == [0, 0, 1]


def test_per_row_families_pad_a_text_only_row_with_a_blank_image() -> None:
    data = rows()
    data[0]["pixel_values"] = np.ones((1, 5, 3, 4, 4), np.float32)  # Idefics3: (row, tiles, ...)
    data[1]["pixel_values"] = None
    batch = VLMCollator(pad_token_id=0, images_per_row=True)(data)
    assert batch["pixel_values"].shape == (2, 5, 3, 4, 4)
    assert batch["pixel_values"][1].eq(0).all()


def test_labels_must_align_with_input_ids() -> None:
    data = rows()
    data[1]["labels"] = [-100] * 7
    with pytest.raises(ValueError, match="row 1: 'labels' has 7 tokens but 'input_ids' has 2"):
        VLMCollator(pad_token_id=0)(data)


def test_pad_id_comes_from_the_processor(tmp_path) -> None:
    model_dir = build_tiny_vlm(str(tmp_path / "model"), image_size=16, patch_size=8)
    collate = VLMCollator(processor=model_dir)
    restored = pickle.loads(pickle.dumps(collate))  # workers get the name, not the object
    batch = restored(rows())
    pad = restored._lazy.tokenizer.pad_token_id
    assert batch["input_ids"][1, 2:].eq(pad).all()


def test_real_transform_rows_collate(tmp_path) -> None:
    model_dir = build_tiny_vlm(str(tmp_path / "model"), image_size=16, patch_size=8)
    out = VLMTransform(model_dir)(
        {
            "image": [Image.new("RGB", (9, 9)), Image.new("L", (30, 5))],
            "question": ["What color is the shape?", "Where?"],
            "answer": ["red", "on the left of the picture"],
        }
    )
    batch = VLMCollator(processor=model_dir)([{k: v[i] for k, v in out.items()} for i in range(2)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (2, 3, 16, 16)  # one image per row
    assert batch["attention_mask"].sum().item() == sum(len(ids) for ids in out["input_ids"])


def test_needs_a_pad_id_source() -> None:
    with pytest.raises(ValueError, match="processor` or `pad_token_id"):
        VLMCollator()
    with pytest.raises(ValueError, match="no 'input_ids'"):
        VLMCollator(pad_token_id=0)([{"image": 1}])
