"""Offline data for the VLM examples: the shapes data set and the tiny VLM, made on demand.

:class:`ShapesData` is what a config names under ``data.prepare``; it runs in
``prepare_data()`` and does nothing when everything is already there.

Command line (a realistic size; ``--workers`` renders shards in parallel)::

    python -m lightning_stream.vlm.data --out data/shapes --rows 500000 --shards 16 --workers 8

Example:
    >>> ShapesData(out_dir="data/shapes", num_rows=1000)()  # doctest: +SKIP
    'data/shapes'
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

from lightning_stream.vlm.shapes import (
    COLORS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    SIZES,
    make_row,
    make_shapes,
    render_shape,
)
from lightning_stream.vlm.tiny import build_tiny_vlm

log = logging.getLogger(__name__)

__all__ = [
    "ShapesData",
    "make_shapes",
    "build_tiny_vlm",
    "render_shape",
    "make_row",
    "QUESTIONS",
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
]


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
        workers: processes rendering shards in parallel (for large ``num_rows``).
        chat_dir: also write the conversation variant
            (:func:`~lightning_stream.vlm.shapes_chat.make_shape_chats`, ``num_rows`` +
            ``val_rows`` rows) there; ``None`` skips it.

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
        workers: int = 1,
        chat_dir: str | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.num_rows = num_rows
        self.val_rows = val_rows
        self.image_size = image_size
        self.num_shards = num_shards
        self.seed = seed
        self.model_dir = os.path.join(out_dir, "model") if model_dir is None else model_dir
        self.model_kwargs = dict(model_kwargs or {})
        self.workers = workers
        self.chat_dir = chat_dir

    def __call__(self) -> str:
        make_shapes(
            self.out_dir,
            num_rows=self.num_rows,
            seed=self.seed,
            image_size=self.image_size,
            num_shards=self.num_shards,
            val_rows=self.val_rows,
            workers=self.workers,
        )
        if self.model_dir:
            build_tiny_vlm(self.model_dir, image_size=self.image_size, **self.model_kwargs)
        if self.chat_dir:
            from lightning_stream.vlm.shapes_chat import make_shape_chats

            make_shape_chats(self.chat_dir, self.num_rows, self.seed, self.image_size, self.val_rows)
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
