"""The synthetic "shapes" VQA data set: rendering, rows and parquet shards.

Each image shows one shape (circle, square, triangle, star) of one colour, size and
position on a light background; each row asks one question about it::

    What color is the shape?      -> red
    What shape is it?             -> circle
    Where is the shape?           -> left
    Is the shape small or large?  -> small

Rows are written as parquet shards with a ``datasets`` ``Image`` column, the layout the hub
uses (``train-00000-of-00004.parquet``, ``val-00000-of-00001.parquet``). Row ``i`` of a split
depends only on ``(seed, split, i)``, so the data do not change with the shard count.

Example:
    >>> make_shapes("data/shapes", num_rows=1000)["val"]  # doctest: +SKIP
    ['data/shapes/val-00000-of-00001.parquet']
"""

from __future__ import annotations

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

__all__ = ["make_shapes", "make_row", "render_shape", "corpus", "QUESTIONS"]

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

    Returns the shard paths per split. Shards of an earlier, different shapes data set in
    ``out_dir`` (other row or shard counts, named by its manifest) are removed, so
    ``train-*.parquet`` globs only the current one; files it did not write are never removed
    nor overwritten (``FileExistsError``).

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
    done: dict = {}
    if os.path.isfile(manifest):
        with open(manifest) as f:
            done = json.load(f)
        if done == params and all(os.path.isfile(p) for ps in paths.values() for p in ps):
            log.info("shapes data already in %s", out_dir)
            return paths
    # Only shards an earlier make_shapes wrote here (named by its manifest) are ours to replace
    # or remove: a folder that also holds the user's own train-00000-of-00004.parquet keeps it.
    ours = _written_by(out_dir, done)
    wanted = {p for ps in paths.values() for p in ps}
    theirs = sorted(p for p in wanted if os.path.exists(p) and p not in ours)
    if theirs:
        raise FileExistsError(
            f"make_shapes: {theirs[0]} exists and was not written by make_shapes (no {_MANIFEST} names it); "
            "it is not overwritten: choose an empty out_dir for the generated data"
        )
    os.makedirs(out_dir, exist_ok=True)
    # Written first, marked incomplete, so that a run cut short leaves shards that are known ours.
    with open(manifest, "w") as f:
        json.dump({**params, "complete": False}, f, indent=2)
    for stale in sorted(ours - wanted):
        if os.path.exists(stale):
            log.info("removing shard %s of an earlier shapes data set", stale)
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


def _written_by(out_dir: str, manifest: dict) -> set[str]:
    """The shard paths the data set described by ``manifest`` (complete or not) consists of."""
    try:
        shards = int(manifest["num_shards"])
        names = _shard_names("train", shards) + (_shard_names("val", 1) if manifest.get("val_rows") else [])
    except (KeyError, TypeError, ValueError):
        return set()
    return {os.path.join(out_dir, n) for n in names}


def corpus() -> list[str]:
    """Every string the chat will contain, for training the tokenizer."""
    texts = list(COLORS) + list(SHAPES) + list(SIZES) + list(POSITIONS)
    for templates in QUESTIONS.values():
        for template in templates:
            for shape in SHAPES:
                for color in COLORS:
                    texts.append(template.format(shape=shape, color=color))
    texts.append("You are a helpful assistant that answers questions about images.")
    return texts
