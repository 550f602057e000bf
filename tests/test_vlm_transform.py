"""VLMTransform: answer-only labels, odd images, clear errors, truncation that spares images."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from lightning_stream.vlm import VLMTransform, build_tiny_vlm, load_image
from lightning_stream.vlm.transform import IGNORE_INDEX

IMAGE_SIZE = 32
PATCH = 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_vlm(str(tmp_path_factory.mktemp("vlm") / "model"), image_size=IMAGE_SIZE, patch_size=PATCH)


@pytest.fixture(scope="module")
def transform(model_dir: str) -> VLMTransform:
    return VLMTransform(processor=model_dir, max_length=128)


def red(size: tuple[int, int] = (20, 20), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0)).convert(mode)


def one(transform: VLMTransform, image, question="What color is the shape?", answer="red"):
    out = transform({"image": [image], "question": [question], "answer": [answer]})
    return {k: v[0] for k, v in out.items()}


def image_token_id(transform: VLMTransform) -> int:
    return transform._lazy.tokenizer.convert_tokens_to_ids("<image>")


def test_labels_cover_only_the_answer_and_end_of_turn(transform: VLMTransform) -> None:
    row = one(transform, red())
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == len(row["attention_mask"])
    supervised = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    # One contiguous run at the end of the conversation (only a newline may follow).
    assert supervised == list(range(supervised[0], supervised[-1] + 1))
    assert [labels[i] for i in supervised] == [ids[i] for i in supervised]
    tokenizer = transform._lazy.tokenizer
    assert tokenizer.decode([ids[i] for i in supervised]) == "red<|end|>"
    # Prompt and image tokens are all masked.
    image_positions = [i for i, t in enumerate(ids) if t == image_token_id(transform)]
    assert len(image_positions) == N_IMAGE_TOKENS
    assert all(labels[i] == IGNORE_INDEX for i in range(supervised[0]))
    assert row["pixel_values"].dtype == np.float32
    assert row["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)  # one image


def test_batched_output_has_one_entry_per_row(transform: VLMTransform) -> None:
    batch = {
        "image": [red(), red((5, 9))],
        "question": ["What shape is it?", "Where is the shape?"],
        "answer": ["circle", "left"],
        "id": [7, 8],
    }
    out = transform(batch)
    assert set(out) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert all(len(v) == 2 for v in out.values())


def test_system_prompt_is_masked(model_dir: str) -> None:
    plain = one(VLMTransform(model_dir), red())
    system = one(VLMTransform(model_dir, system_prompt="Answer in one word."), red())
    assert len(system["input_ids"]) > len(plain["input_ids"])
    assert [x for x in system["labels"] if x != IGNORE_INDEX] == [x for x in plain["labels"] if x != IGNORE_INDEX]


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 1
    return image


ODD_IMAGES = {
    "RGBA": lambda: red(mode="RGBA"),
    "LA": lambda: red(mode="LA"),
    "L": lambda: red(mode="L"),
    "1": lambda: red(mode="1"),
    "P": lambda: red(mode="P"),
    "P+transparency": _palette_with_transparency,
    "CMYK": lambda: red(mode="CMYK"),
    "I;16": lambda: Image.fromarray(np.full((6, 7), 40000, dtype=np.uint16)),
    "I": lambda: red(mode="I"),
    "F": lambda: Image.fromarray(np.full((6, 7), 0.5, dtype=np.float32)),
    "1x1": lambda: red((1, 1)),
    "300x17": lambda: red((300, 17)),
    "17x300": lambda: red((17, 300)),
}


@pytest.mark.parametrize("kind", sorted(ODD_IMAGES))
def test_odd_sizes_and_modes(transform: VLMTransform, kind: str) -> None:
    row = one(transform, ODD_IMAGES[kind]())
    pixels = row["pixel_values"]
    assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(pixels).all()
    assert row["input_ids"].count(image_token_id(transform)) == N_IMAGE_TOKENS


def test_tiny_image_keeps_its_colour(transform: VLMTransform) -> None:
    # A 1x1 array is easy to misread as channels-first; it must stay a red image.
    tiny = one(transform, red((1, 1)))["pixel_values"]
    np.testing.assert_allclose(tiny, one(transform, red((20, 20)))["pixel_values"], atol=1e-5)
    assert tiny[0, 0].mean() > tiny[0, 1].mean() + 1  # red channel stays the bright one


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_palette_with_transparency()).getpixel((0, 0)) == (255, 0, 0)
    sixteen = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert load_image(sixteen).getpixel((0, 0)) == (255, 255, 255)


def test_image_given_as_bytes_dict_path_or_array(transform: VLMTransform, tmp_path) -> None:
    buffer = io.BytesIO()
    red().save(buffer, format="PNG")
    data = buffer.getvalue()
    path = tmp_path / "red.png"
    path.write_bytes(data)
    reference = one(transform, red())["pixel_values"]
    for value in (
        data,
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(path)},
        str(path),
        path,
        np.asarray(red()),
    ):
        np.testing.assert_allclose(one(transform, value)["pixel_values"], reference, atol=1e-6)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"bytes": None, "path": None}, "image column 'picture': image is missing"),
        (b"not an image", "image column 'picture': cannot decode image (PIL.UnidentifiedImageError"),
        (b"", "image column 'picture': cannot decode image"),
        ("/no/such/file.png", "image column 'picture': file not found"),
        (12345, "image column 'picture': unsupported image type int"),
    ],
)
def test_bad_image_raises_value_error_naming_the_column(model_dir, value, message) -> None:
    transform = VLMTransform(model_dir, image_column="picture")
    batch = {"picture": [red(), value], "question": ["q?", "q?"], "answer": ["a", "a"], "id": [0, 41]}
    with pytest.raises(ValueError) as info:
        transform(batch)
    assert str(info.value).startswith(message)
    assert "row 1 (id=41)" in str(info.value)


def test_row_without_image_is_trained_as_text(model_dir) -> None:
    transform = VLMTransform(model_dir, image_column="picture")
    batch = {"picture": [None, red()], "question": ["Hi?", "q?"], "answer": ["hello", "a"]}
    out = transform(batch)
    assert out["pixel_values"][0] is None and out["pixel_values"][1].shape[0] == 1
    assert image_token_id(transform) not in out["input_ids"][0]
    tokenizer = transform._lazy.tokenizer
    answer = [t for t, label in zip(out["input_ids"][0], out["labels"][0]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "hello<|end|>"


def test_truncated_png_is_reported(transform: VLMTransform) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    with pytest.raises(ValueError, match="image column 'image': cannot decode image"):
        one(transform, buffer.getvalue()[:200])


def test_missing_column_is_named(transform: VLMTransform) -> None:
    with pytest.raises(ValueError, match="column 'answer' not in batch"):
        transform({"image": [red()], "question": ["q"]})


def test_long_answer_is_cut_and_image_tokens_survive(model_dir: str) -> None:
    limit = N_IMAGE_TOKENS + 20
    transform = VLMTransform(model_dir, max_length=limit)
    row = one(transform, red(), answer="red " * 200)
    assert len(row["input_ids"]) == len(row["labels"]) == limit
    assert row["input_ids"].count(image_token_id(transform)) == N_IMAGE_TOKENS
    assert any(label != IGNORE_INDEX for label in row["labels"])


def test_long_question_is_shortened_and_image_tokens_survive(model_dir: str) -> None:
    limit = N_IMAGE_TOKENS + 30
    transform = VLMTransform(model_dir, max_length=limit)
    row = one(transform, red(), question="What color is the shape? " * 100, answer="red")
    assert len(row["input_ids"]) <= limit
    assert row["input_ids"].count(image_token_id(transform)) == N_IMAGE_TOKENS
    tokenizer = transform._lazy.tokenizer
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "red<|end|>"  # a short answer is kept whole


def test_image_that_cannot_fit_raises(model_dir: str) -> None:
    transform = VLMTransform(model_dir, max_length=N_IMAGE_TOKENS)
    with pytest.raises(ValueError, match=r"row 0: the image and the chat template alone need"):
        one(transform, red())


def test_non_string_answer_is_named(transform: VLMTransform) -> None:
    with pytest.raises(ValueError, match="answer column 'answer': row 0: expected a string"):
        one(transform, red(), answer=None)


def test_picklable_before_and_after_loading(model_dir: str) -> None:
    transform = VLMTransform(model_dir, max_length=64)
    before = pickle.dumps(transform)
    one(transform, red())
    after = pickle.dumps(transform)
    assert len(after) < 10_000, "the loaded processor must not travel to workers"
    assert one(pickle.loads(before), red())["input_ids"] == one(pickle.loads(after), red())["input_ids"]


def test_a_dark_16_bit_png_keeps_its_full_range(tmp_path) -> None:
    """A 16-bit grayscale PNG of values 0-200 is near black, not an 8-bit image of 0-200."""
    ramp = np.tile(np.arange(0, 201, dtype=np.uint16), (3, 1))
    path = tmp_path / "dark16.png"
    Image.fromarray(ramp).save(path)
    opened = Image.open(path)
    pixels = np.asarray(load_image(opened))[..., 0].astype(int)
    assert np.abs(pixels - np.round(ramp / 257.0)).max() <= 1
    bright = np.full((2, 2), 51400, dtype=np.uint16)  # 200 * 257
    assert load_image(Image.fromarray(bright)).getpixel((0, 0)) == (200, 200, 200)
