"""Synthetic "shapes" VQA data and a tiny VLM to learn it, both made offline.

Each image shows one shape (circle, square, triangle, star) of one colour, size and
position on a light background; each row asks one question about it::

    What color is the shape?      -> red
    What shape is it?             -> circle
    Where is the shape?           -> left
    Is the shape small or large?  -> small

Rows are written as parquet shards with a ``datasets`` ``Image`` column, the layout the hub
uses (``train-00000-of-00004.parquet``, ``val-00000-of-00001.parquet``). Row ``i`` of a split
depends only on ``(seed, split, i)``, so the data do not change with the shard count.

Command line (a realistic size; ``--workers`` renders shards in parallel)::

    python -m lightning_stream.vlm.data --out data/shapes --rows 500000 --shards 16 --workers 8

Example:
    >>> ShapesData(out_dir="data/shapes", num_rows=1000)()  # doctest: +SKIP
    'data/shapes'
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import logging
import math
import os
import random
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

__all__ = ["ShapesData", "make_shapes", "build_tiny_vlm", "render_shape", "QUESTIONS"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": (0.10, 0.13), "large": (0.18, 0.22)}  # radius as a fraction of the side
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
# Several phrasings per question kind, so the model must read the question to pick the
# attribute rather than memorise one string.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the shape?", "Which colour is the {shape}?", "What is its color?"),
    "shape": ("What shape is it?", "What shape is shown?", "Which shape is {color}?"),
    "position": ("Where is the shape?", "Where is the {color} {shape}?", "Which side is it on?"),
    "size": ("Is the shape small or large?", "How big is the {shape}?", "What size is it?"),
}
_SPLIT_IDS = {"train": 0, "val": 1}
_MANIFEST = "shapes.json"
_FORMAT_VERSION = 1


def render_shape(
    shape: str,
    color: str,
    size: str,
    position: str,
    image_size: int = 64,
    rng: random.Random | None = None,
) -> Image.Image:
    """Draw one shape on a light background; ``rng`` adds jitter to colour, size and place.

    Example:
        >>> render_shape("circle", "red", "large", "left", 64).size
        (64, 64)
    """
    rng = rng or random.Random(0)
    side = image_size
    grey = rng.randint(225, 255)
    image = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    low, high = SIZES[size]
    radius = rng.uniform(low, high) * side
    fx, fy = POSITIONS[position]
    cx = (fx + rng.uniform(-0.04, 0.04)) * side
    cy = (fy + rng.uniform(-0.04, 0.04)) * side
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.85  # same visual weight as the circle
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, -math.pi / 2), fill=fill)
    elif shape == "star":
        outer = _polygon(cx, cy, radius, 5, -math.pi / 2)
        inner = _polygon(cx, cy, radius * 0.45, 5, -math.pi / 2 + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return image


def _polygon(cx: float, cy: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def make_row(index: int, split: str, seed: int, image_size: int) -> dict[str, Any]:
    """Row ``index`` of ``split``: a pure function of its arguments.

    Example:
        >>> make_row(0, "train", 0, 64)["answer"] == make_row(0, "train", 0, 64)["answer"]
        True
    """
    rng = random.Random(seed * 1_000_003 + _SPLIT_IDS[split] * 10**12 + index)
    attrs = {
        "shape": rng.choice(SHAPES),
        "color": rng.choice(list(COLORS)),
        "size": rng.choice(list(SIZES)),
        "position": rng.choice(list(POSITIONS)),
    }
    kind = rng.choice(list(QUESTIONS))
    question = rng.choice(QUESTIONS[kind]).format(**attrs)
    image = render_shape(attrs["shape"], attrs["color"], attrs["size"], attrs["position"], image_size, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "image": {"bytes": buffer.getvalue(), "path": None},
        "question": question,
        "answer": attrs[kind],
        "id": index,
    }


def _shard_names(split: str, num_shards: int) -> list[str]:
    return [f"{split}-{k:05d}-of-{num_shards:05d}.parquet" for k in range(num_shards)]


def _write_shard(path: str, split: str, start: int, stop: int, seed: int, image_size: int) -> str:
    import datasets

    rows = [make_row(i, split, seed, image_size) for i in range(start, stop)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "id": datasets.Value("int64"),
        }
    )
    columns = {key: [row[key] for row in rows] for key in features}
    table = datasets.Dataset.from_dict(columns, features=features)
    # Write beside the target and rename, so a killed run never leaves a half shard that
    # a glob would pick up.
    tmp = path + ".tmp"
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # one bar per shard is noise, not progress
    try:
        table.to_parquet(tmp)
    finally:
        if bars_were_on:
            datasets.utils.enable_progress_bars()
    os.replace(tmp, path)
    return path


def make_shapes(
    out_dir: str,
    num_rows: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    num_shards: int = 4,
    val_rows: int = 200,
    workers: int = 1,
) -> dict[str, list[str]]:
    """Write the shapes data set; a no-op when ``out_dir`` already holds the same one.

    Returns the shard paths per split. Shards of an earlier, different data set in
    ``out_dir`` (other row or shard counts) are removed, so ``train-*.parquet`` globs only
    the current one.

    Example:
        >>> make_shapes("data/shapes", num_rows=1000)["val"]  # doctest: +SKIP
        ['data/shapes/val-00000-of-00001.parquet']
    """
    if num_rows < 1 or val_rows < 0 or num_shards < 1:
        raise ValueError("need num_rows >= 1, val_rows >= 0 and num_shards >= 1")
    num_shards = min(num_shards, num_rows)
    params = {
        "version": _FORMAT_VERSION,
        "num_rows": num_rows,
        "val_rows": val_rows,
        "seed": seed,
        "image_size": image_size,
        "num_shards": num_shards,
    }
    plan: dict[str, list[tuple[str, int, int]]] = {"train": [], "val": []}
    for k, name in enumerate(_shard_names("train", num_shards)):
        plan["train"].append((name, num_rows * k // num_shards, num_rows * (k + 1) // num_shards))
    if val_rows:
        plan["val"].append((_shard_names("val", 1)[0], 0, val_rows))
    paths = {split: [os.path.join(out_dir, n) for n, _, _ in jobs] for split, jobs in plan.items()}

    manifest = os.path.join(out_dir, _MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            done = json.load(f)
        if done == params and all(os.path.isfile(p) for ps in paths.values() for p in ps):
            log.info("shapes data already in %s", out_dir)
            return paths
        os.remove(manifest)
    os.makedirs(out_dir, exist_ok=True)
    wanted = {p for ps in paths.values() for p in ps}
    for stale in glob.glob(os.path.join(out_dir, "*-?????-of-?????.parquet*")):
        if stale not in wanted:
            log.info("removing stale shard %s", stale)
            os.remove(stale)

    jobs = [
        (os.path.join(out_dir, name), split, start, stop, seed, image_size)
        for split, items in plan.items()
        for name, start, stop in items
    ]
    log.info("writing %d train + %d val rows to %s", num_rows, val_rows, out_dir)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            list(pool.map(_write_shard, *zip(*jobs)))
    else:
        for job in jobs:
            _write_shard(*job)
    with open(manifest, "w") as f:  # written last: its presence means "complete"
        json.dump(params, f, indent=2)
    return paths


def _corpus() -> list[str]:
    """Every string the chat will contain, for training the tokenizer."""
    texts = list(COLORS) + list(SHAPES) + list(SIZES) + list(POSITIONS)
    for templates in QUESTIONS.values():
        for template in templates:
            for shape in SHAPES:
                for color in COLORS:
                    texts.append(template.format(shape=shape, color=color))
    texts.append("You are a helpful assistant that answers questions about images.")
    return texts


# Per-channel statistics of the shapes images. Normalising with them puts the background
# near zero, so a background patch embeds to little more than its position embedding and
# the position of the shape is visible to the model from the first step; with the usual
# (0.5, 0.5) the light background's content swamps the small random position embeddings.
SHAPES_MEAN = (0.918, 0.905, 0.899)
SHAPES_STD = (0.131, 0.156, 0.181)

SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<image>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each turn is "<|role|>\n ... <|end|>\n"; the image sits where the user turn puts it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_vlm(
    out_dir: str,
    image_size: int = 64,
    patch_size: int = 16,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    hidden_size: int = 128,
    text_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    image_mean: tuple[float, float, float] = SHAPES_MEAN,
    image_std: tuple[float, float, float] = SHAPES_STD,
) -> str:
    """Save config and processor of a tiny LLaVA-style VLM (no weights) to ``out_dir``.

    A byte-level BPE tokenizer is trained on the shapes questions and answers; the vision
    tower is a small CLIP ViT, the language model a small Llama. The default is ~0.7M
    parameters, with ``(image_size / patch_size)**2`` image tokens. ``AutoConfig`` and
    ``AutoProcessor`` load the result offline; :class:`VisionLanguageModel` initialises
    weights from the config. A no-op if ``out_dir`` already holds the same build.

    Example:
        >>> from transformers import AutoProcessor
        >>> build_tiny_vlm("data/shapes/model")  # doctest: +SKIP
        >>> AutoProcessor.from_pretrained("data/shapes/model")  # doctest: +SKIP
    """
    params = dict(
        version=_FORMAT_VERSION,
        image_size=image_size,
        patch_size=patch_size,
        vision_hidden_size=vision_hidden_size,
        vision_layers=vision_layers,
        hidden_size=hidden_size,
        text_layers=text_layers,
        num_heads=num_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    manifest = os.path.join(out_dir, "tiny_vlm.json")
    if os.path.isfile(manifest) and os.path.isfile(os.path.join(out_dir, "config.json")):
        with open(manifest) as f:
            if json.load(f) == params:
                return out_dir
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # Byte-level, so any text (a long question, an odd character) still tokenizes.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",  # end of turn: generation stops where the answer ends
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    # Plain resize to a square (no crop): odd aspect ratios keep all their content.
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    num_image_tokens = (image_size // patch_size) ** 2
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # drop CLIP's CLS token ...
        num_additional_image_tokens=1,  # ... which the count must then include
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden_size // 32),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_layer=-1,  # the last layer: a 2-layer tower has little to choose from
        vision_feature_select_strategy="default",
    )
    os.makedirs(out_dir, exist_ok=True)
    processor.save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    with open(manifest, "w") as f:
        json.dump(params, f, indent=2)
    log.info("tiny VLM config and processor saved to %s", out_dir)
    return out_dir


class ShapesData:
    """Make the shapes data set (and the tiny VLM) if missing; for ``prepare=`` in configs.

    Args:
        out_dir: where the parquet shards go.
        num_rows, val_rows: train and validation rows.
        image_size: image side in pixels (also the tiny VLM's input size).
        num_shards: number of train shards.
        seed: data seed.
        model_dir: where the tiny VLM's config and processor go; ``None`` means
            ``<out_dir>/model``. Set it to ``""`` to skip the model.
        model_kwargs: extra arguments for :func:`build_tiny_vlm` (``hidden_size``, ...).

    Example (YAML)::

        data:
          prepare:
            class_path: lightning_stream.vlm.ShapesData
            init_args: {out_dir: data/shapes, num_rows: 1000}
    """

    def __init__(
        self,
        out_dir: str,
        num_rows: int = 1000,
        val_rows: int = 200,
        image_size: int = 64,
        num_shards: int = 4,
        seed: int = 0,
        model_dir: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.num_rows = num_rows
        self.val_rows = val_rows
        self.image_size = image_size
        self.num_shards = num_shards
        self.seed = seed
        self.model_dir = os.path.join(out_dir, "model") if model_dir is None else model_dir
        self.model_kwargs = dict(model_kwargs or {})

    def __call__(self) -> str:
        make_shapes(
            self.out_dir,
            num_rows=self.num_rows,
            seed=self.seed,
            image_size=self.image_size,
            num_shards=self.num_shards,
            val_rows=self.val_rows,
        )
        if self.model_dir:
            build_tiny_vlm(self.model_dir, image_size=self.image_size, **self.model_kwargs)
        return self.out_dir

    def __repr__(self) -> str:
        return f"ShapesData(out_dir={self.out_dir!r}, num_rows={self.num_rows})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes VQA data set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rows", type=int, default=1000, help="train rows")
    parser.add_argument("--val-rows", type=int, default=None, help="default: rows/100, >= 200")
    parser.add_argument("--shards", type=int, default=None, help="default: one per 25k rows")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering shards")
    parser.add_argument("--model-dir", default=None, help="tiny VLM dir (default OUT/model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    val_rows = args.val_rows if args.val_rows is not None else max(200, args.rows // 100)
    shards = args.shards if args.shards is not None else max(1, math.ceil(args.rows / 25_000))
    make_shapes(args.out, args.rows, args.seed, args.image_size, shards, val_rows, args.workers)
    model_dir = os.path.join(args.out, "model") if args.model_dir is None else args.model_dir
    if model_dir:
        build_tiny_vlm(model_dir, image_size=args.image_size)


if __name__ == "__main__":
    main()
