"""Shapes data and the tiny VLM: layout, HF features, determinism, idempotence, offline loading."""

from __future__ import annotations

import os

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lightning_stream.vlm import ShapesData, build_tiny_vlm, make_shapes
from lightning_stream.vlm.data import COLORS, POSITIONS, SHAPES, SIZES, main, make_row


def test_layout_and_features(tmp_path) -> None:
    paths = make_shapes(str(tmp_path), num_rows=30, val_rows=7, num_shards=3, image_size=32)
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "shapes.json",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
        "val-00000-of-00001.parquet",
    ]
    assert [len(pq.read_table(p)) for p in paths["train"]] == [10, 10, 10]
    schema = pq.read_schema(paths["val"][0])
    features = datasets.Features.from_arrow_schema(schema)
    assert isinstance(features["image"], datasets.Image)
    assert features["id"] == datasets.Value("int64")
    ds = datasets.load_dataset("parquet", data_files=paths["val"], split="train")
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
    answers = set(COLORS) | set(SHAPES) | set(SIZES) | set(POSITIONS)
    assert set(ds["answer"]) <= answers
    assert ds["id"] == list(range(7))


def test_deterministic_and_independent_of_shard_count(tmp_path) -> None:
    a = make_shapes(str(tmp_path / "a"), num_rows=12, val_rows=0, num_shards=1, seed=3)
    b = make_shapes(str(tmp_path / "b"), num_rows=12, val_rows=0, num_shards=4, seed=3)
    rows_a = pq.read_table(a["train"]).to_pylist()
    rows_b = [r for p in b["train"] for r in pq.read_table(p).to_pylist()]
    assert rows_a == rows_b
    other = make_row(0, "train", 4, 64)
    assert other["image"]["bytes"] != make_row(0, "train", 3, 64)["image"]["bytes"]


def test_idempotent_and_stale_shards_removed(tmp_path) -> None:
    out = str(tmp_path)
    first = make_shapes(out, num_rows=20, val_rows=4, num_shards=4)
    stamp = os.path.getmtime(first["train"][0])
    assert make_shapes(out, num_rows=20, val_rows=4, num_shards=4) == first
    assert os.path.getmtime(first["train"][0]) == stamp  # nothing rewritten
    second = make_shapes(out, num_rows=20, val_rows=4, num_shards=2)
    train = sorted(n for n in os.listdir(out) if n.startswith("train-"))
    assert train == [os.path.basename(p) for p in second["train"]]


def test_files_it_did_not_write_are_never_removed_nor_overwritten(tmp_path) -> None:
    out = str(tmp_path)
    mine = os.path.join(out, "train-00000-of-00003.parquet")  # the user's own shard, same naming
    with open(mine, "w") as f:
        f.write("the user's data")
    make_shapes(out, num_rows=20, val_rows=4, num_shards=4)
    make_shapes(out, num_rows=20, val_rows=4, num_shards=2)  # replaces its own shards only
    with open(mine) as f:
        assert f.read() == "the user's data"
    with pytest.raises(
        FileExistsError, match=r"train-00000-of-00003.parquet exists and was not written by make_shapes"
    ):
        make_shapes(out, num_rows=20, val_rows=4, num_shards=3)
    with open(mine) as f:
        assert f.read() == "the user's data"


def test_tiny_vlm_loads_offline_and_counts_image_tokens(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    model_dir = build_tiny_vlm(str(tmp_path / "m"), image_size=32, patch_size=8)
    assert not any(n.endswith((".safetensors", ".bin")) for n in os.listdir(model_dir))
    processor = AutoProcessor.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    out = processor(images=[Image.new("RGB", (7, 7))], text=prompt, return_tensors="pt")
    assert (out["input_ids"] == config.image_token_id).sum().item() == 16
    assert model(**out).logits.shape[-1] == config.text_config.vocab_size


def test_shapes_data_callable_for_prepare(tmp_path) -> None:
    prepare = ShapesData(out_dir=str(tmp_path / "shapes"), num_rows=8, val_rows=2, num_shards=2)
    assert prepare() == str(tmp_path / "shapes")
    assert os.path.isfile(tmp_path / "shapes" / "model" / "config.json")
    assert os.path.isfile(tmp_path / "shapes" / "val-00000-of-00001.parquet")
    skip_model = ShapesData(out_dir=str(tmp_path / "s2"), num_rows=4, val_rows=0, model_dir="")
    skip_model()
    assert not os.path.exists(tmp_path / "s2" / "model")


def test_command_line(tmp_path) -> None:
    main(
        [
            "--out",
            str(tmp_path),
            "--rows",
            "10",
            "--val-rows",
            "3",
            "--shards",
            "2",
            "--image-size",
            "32",
            "--workers",
            "2",
        ]
    )
    assert os.path.isfile(tmp_path / "train-00001-of-00002.parquet")
    assert os.path.isfile(tmp_path / "model" / "processor_config.json")


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        make_shapes("unused", num_rows=0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_tiny_vlm("unused", image_size=30, patch_size=8)
