"""The shapes data as conversations: several turns, 0 to 2 images per row, HF ``messages``.

Each row is one of::

    [img, img] "Compare the two images. Do the shapes have the same color?" -> "yes" / "no"
               "What shape is in the first image?" -> "circle"   "And in the second?" -> "star"
    [img]      "What color is the shape?" -> "red"               "Where is it?" -> "left"
    []         "How many corners does a triangle have?" -> "three"  (text only)

with the layout of the hub's instruction sets: an ``images`` list and ``messages`` whose
user turns hold ``{"type": "image"}`` parts. Row ``i`` depends only on ``(seed, split, i)``.

The ``varied`` variant (:class:`VariedChatData`, for token-budget steps) has 1 to 3 images a
row and answers from one word to a sentence per image, so rows range from ~40 to ~250 tokens
(64 px images of 16 tokens, the tiny VLM's tokenizer)::

    [img, img, img] "How many images are there?" -> "three"
                    "Describe every image in detail." -> "The first image shows a small red
                    circle at the left. The second image shows ..."

and stores each row's ``num_tokens`` (what the training transform makes of it, counted once
when the data are written), which :class:`TokensAndImages` hands to the data module's
``length`` with the row's image count.

Example:
    >>> make_shape_chats("data/shapes-chat", num_rows=600)["val"]  # doctest: +SKIP
    ['data/shapes-chat/val-00000-of-00001.parquet']
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

from lightning_stream.lengths import TokensAndImages  # re-exported: the examples name it here
from lightning_stream.vlm.shapes import COLORS, POSITIONS, SHAPES, SIZES, render_shape

__all__ = [
    "make_shape_chats",
    "make_chat_row",
    "make_varied_chat_row",
    "count_tokens",
    "VariedChatData",
    "TokensAndImages",
    "CHAT_TEXTS",
]

_SPLIT_IDS = {"train": 0, "val": 1}
_VARIED = 7 * 10**13  # the varied rows' seeds differ from the conversation rows' ones
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


_ORDINALS = ("first", "second", "third")
_NUMBERS = ("one", "two", "three")


def _describe(attrs: dict[str, str]) -> str:
    return f"a {attrs['size']} {attrs['color']} {attrs['shape']} at the {attrs['position']}"


def make_varied_chat_row(index: int, split: str, seed: int, image_size: int) -> dict[str, Any]:
    """Row ``index`` of the varied variant: 1 to 3 images, 1 to 4 exchanges whose answers
    range from one word to a sentence per image; a pure function of its arguments."""
    rng = random.Random(seed * 1_000_003 + _SPLIT_IDS[split] * 10**12 + index + _VARIED)
    count = rng.randint(1, 3)
    images, attrs = zip(*(_image(rng, image_size) for _ in range(count)))
    name = [f"the {_ORDINALS[j]} image" if count > 1 else "the image" for j in range(count)]
    pool = [("How many images are there?", _NUMBERS[count - 1])]
    for j, a in enumerate(attrs):
        pool.append((f"What color is the shape in {name[j]}?", a["color"]))
        pool.append((f"Describe {name[j]}.", _describe(a).capitalize() + "."))
    if count > 1:
        pool.append(("List the shapes in order.", ", ".join(a["shape"] for a in attrs).capitalize() + "."))
    every = " ".join(f"{name[j].capitalize()} shows {_describe(a)}." for j, a in enumerate(attrs))
    pool.append(("Describe every image in detail.", every))
    exchanges = rng.sample(pool, rng.randint(1, min(4, len(pool))))
    messages = []
    for k, (question, answer) in enumerate(exchanges):
        messages.append(_turn("user", question, images=count if k == 0 else 0))
        messages.append(_turn("assistant", answer))
    return {"images": list(images), "messages": messages, "id": index}


def count_tokens(rows: list[dict[str, Any]], processor: str, max_length: int | None = None) -> list[int]:
    """Each row's tokens as :class:`~lightning_stream.vlm.VLMTransform` makes them (the same
    processor and ``max_length`` as training): the exact ``length`` for token-budget steps."""
    from lightning_stream.vlm.transform import VLMTransform

    transform = VLMTransform(processor, max_length=max_length)
    counts: list[int] = []
    for a in range(0, len(rows), 64):
        chunk = rows[a : a + 64]
        out = transform({key: [row[key] for row in chunk] for key in chunk[0]})
        counts.extend(len(ids) for ids in out["input_ids"])
    return counts


def make_shape_chats(
    out_dir: str,
    num_rows: int = 600,
    seed: int = 0,
    image_size: int = 64,
    val_rows: int = 100,
    variant: str = "chat",
    processor: str | None = None,
    max_length: int | None = None,
) -> dict[str, list[str]]:
    """Write ``train-00000-of-00001.parquet`` and ``val-00000-of-00001.parquet``; a no-op
    when they exist. Returns the paths per split.

    ``variant``: ``"chat"`` (0-2 images, :func:`make_chat_row`) or ``"varied"`` (1-3 images,
    answers of very different lengths, :func:`make_varied_chat_row`). ``processor``: also store
    each row's ``num_tokens`` (:func:`count_tokens`, with ``max_length``).
    """
    import datasets

    make_row = {"chat": make_chat_row, "varied": make_varied_chat_row}.get(variant)
    if make_row is None:
        raise ValueError(f"variant must be 'chat' or 'varied', got {variant!r}")
    columns = {
        "images": datasets.Sequence(datasets.Image()),
        "messages": [
            {
                "role": datasets.Value("string"),
                "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
            }
        ],
        "id": datasets.Value("int64"),
    }
    if processor is not None:
        columns["num_tokens"] = datasets.Value("int64")
    features = datasets.Features(columns)
    paths: dict[str, list[str]] = {}
    os.makedirs(out_dir, exist_ok=True)
    for split, rows in (("train", num_rows), ("val", val_rows)):
        path = os.path.join(out_dir, f"{split}-00000-of-00001.parquet")
        paths[split] = [path]
        if os.path.isfile(path) or not rows:
            continue
        data = [make_row(i, split, seed, image_size) for i in range(rows)]
        if processor is not None:
            for row, n in zip(data, count_tokens(data, processor, max_length)):
                row["num_tokens"] = n
        table = datasets.Dataset.from_list(data, features=features)
        table.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)  # a killed run leaves no half file behind
    return paths


class VariedChatData:
    """``data.prepare`` for token-budget steps: the tiny VLM and the varied conversations,
    each row with its ``num_tokens`` (counted with the tiny VLM's processor and ``max_length``,
    as the training transform will cut them). Does nothing for what exists.

    Args:
        out_dir: where the parquet files go.
        model_dir: the tiny VLM's config and processor (built here when missing).
        num_rows, val_rows, image_size, seed: as :func:`make_shape_chats`.
        max_length: the training transform's ``max_length``.
        model_kwargs: extra arguments for :func:`~lightning_stream.vlm.build_tiny_vlm`.

    Example (YAML)::

        prepare:
          class_path: lightning_stream.vlm.shapes_chat.VariedChatData
          init_args: {out_dir: data/shapes-varied, model_dir: data/shapes/model, max_length: 256}
    """

    def __init__(
        self,
        out_dir: str,
        model_dir: str,
        num_rows: int = 1000,
        val_rows: int = 200,
        image_size: int = 64,
        seed: int = 0,
        max_length: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.model_dir = model_dir
        self.num_rows = num_rows
        self.val_rows = val_rows
        self.image_size = image_size
        self.seed = seed
        self.max_length = max_length
        self.model_kwargs = dict(model_kwargs or {})

    def __call__(self) -> str:
        from lightning_stream.vlm.tiny import build_tiny_vlm

        build_tiny_vlm(self.model_dir, image_size=self.image_size, **self.model_kwargs)
        make_shape_chats(
            self.out_dir,
            self.num_rows,
            self.seed,
            self.image_size,
            self.val_rows,
            variant="varied",
            processor=self.model_dir,
            max_length=self.max_length,
        )
        return self.out_dir

    def __repr__(self) -> str:
        return f"VariedChatData(out_dir={self.out_dir!r}, num_rows={self.num_rows})"
