"""The shapes data as conversations: several turns, 0 to 2 images per row, HF ``messages``.

Each row is one of::

    [img, img] "Compare the two images. Do the shapes have the same color?" -> "yes" / "no"
               "What shape is in the first image?" -> "circle"   "And in the second?" -> "star"
    [img]      "What color is the shape?" -> "red"               "Where is it?" -> "left"
    []         "How many corners does a triangle have?" -> "three"  (text only)

with the layout of the hub's instruction sets: an ``images`` list and ``messages`` whose
user turns hold ``{"type": "image"}`` parts. Row ``i`` depends only on ``(seed, split, i)``.

Example:
    >>> make_shape_chats("data/shapes-chat", num_rows=600)["val"]  # doctest: +SKIP
    ['data/shapes-chat/val-00000-of-00001.parquet']
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

from lightning_stream.vlm.shapes import COLORS, POSITIONS, SHAPES, SIZES, render_shape

__all__ = ["make_shape_chats", "make_chat_row", "CHAT_TEXTS"]

_SPLIT_IDS = {"train": 0, "val": 1}
_CORNERS = {"triangle": "three", "square": "four", "circle": "none", "star": "ten"}
CHAT_TEXTS = [
    "Compare the two images. Do the shapes have the same color?",
    "What shape is in the first image?",
    "And in the second?",
    "What color is the shape?",
    "Where is it?",
    "yes",
    "no",
    "three",
    "four",
    "none",
    "ten",
    *[f"How many corners does a {shape} have?" for shape in SHAPES],
]


def _image(rng: random.Random, image_size: int) -> tuple[dict[str, Any], dict[str, str]]:
    attrs = {
        "shape": rng.choice(SHAPES),
        "color": rng.choice(list(COLORS)),
        "size": rng.choice(list(SIZES)),
        "position": rng.choice(list(POSITIONS)),
    }
    image = render_shape(attrs["shape"], attrs["color"], attrs["size"], attrs["position"], image_size, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}, attrs


def _turn(role: str, text: str, images: int = 0) -> dict[str, Any]:
    parts = [{"type": "image", "text": None} for _ in range(images)]
    return {"role": role, "content": parts + [{"type": "text", "text": text}]}


def make_chat_row(index: int, split: str, seed: int, image_size: int) -> dict[str, Any]:
    """Row ``index`` of ``split``: a pure function of its arguments."""
    rng = random.Random(seed * 1_000_003 + _SPLIT_IDS[split] * 10**12 + index)
    kind = rng.choices(("pair", "single", "text"), weights=(2, 2, 1))[0]
    if kind == "pair":
        (a, first), (b, second) = _image(rng, image_size), _image(rng, image_size)
        same = "yes" if first["color"] == second["color"] else "no"
        messages = [
            _turn("user", CHAT_TEXTS[0], images=2),
            _turn("assistant", same),
            _turn("user", CHAT_TEXTS[1]),
            _turn("assistant", first["shape"]),
            _turn("user", CHAT_TEXTS[2]),
            _turn("assistant", second["shape"]),
        ]
        images = [a, b]
    elif kind == "single":
        a, attrs = _image(rng, image_size)
        messages = [
            _turn("user", CHAT_TEXTS[3], images=1),
            _turn("assistant", attrs["color"]),
            _turn("user", CHAT_TEXTS[4]),
            _turn("assistant", attrs["position"]),
        ]
        images = [a]
    else:
        shape = rng.choice(SHAPES)
        messages = [_turn("user", f"How many corners does a {shape} have?"), _turn("assistant", _CORNERS[shape])]
        images = []
    return {"images": images, "messages": messages, "id": index}


def make_shape_chats(
    out_dir: str, num_rows: int = 600, seed: int = 0, image_size: int = 64, val_rows: int = 100
) -> dict[str, list[str]]:
    """Write ``train-00000-of-00001.parquet`` and ``val-00000-of-00001.parquet``; a no-op
    when they exist. Returns the paths per split."""
    import datasets

    features = datasets.Features(
        {
            "images": datasets.Sequence(datasets.Image()),
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
                }
            ],
            "id": datasets.Value("int64"),
        }
    )
    paths: dict[str, list[str]] = {}
    os.makedirs(out_dir, exist_ok=True)
    for split, rows in (("train", num_rows), ("val", val_rows)):
        path = os.path.join(out_dir, f"{split}-00000-of-00001.parquet")
        paths[split] = [path]
        if os.path.isfile(path) or not rows:
            continue
        data = [make_chat_row(i, split, seed, image_size) for i in range(rows)]
        table = datasets.Dataset.from_list(data, features=features)
        table.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)  # a killed run leaves no half file behind
    return paths
