"""Answer a question about an image with a trained checkpoint.

Usage::

    python -m lightning_stream.vlm.predict \\
        --ckpt runs/vlm-tiny/checkpoints/last.ckpt \\
        --image shape.png --question "What color is the shape?"

The checkpoint's hyperparameters name the model directory (config and processor); it must
still exist. ``--model-dir`` points elsewhere if it moved.

Example:
    >>> answer("last.ckpt", "shape.png", "What shape is it?")  # doctest: +SKIP
    'circle'
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from lightning_stream.vlm.module import VisionLanguageModel

log = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "answer"]


def load_checkpoint(ckpt_path: str, model_dir: str | None = None, map_location: str = "cpu") -> VisionLanguageModel:
    """Load a :class:`VisionLanguageModel` from a Lightning ``.ckpt``, ready for inference.

    The architecture is built from the config (``from_scratch=True``), so no pretrained
    weights are read only to be overwritten by the checkpoint's.

    Example:
        >>> model = load_checkpoint("runs/vlm-tiny/checkpoints/last.ckpt")  # doctest: +SKIP
    """
    overrides: dict[str, Any] = {"from_scratch": True}
    if model_dir is not None:
        overrides.update(model_name_or_path=model_dir, processor=model_dir)
    model = VisionLanguageModel.load_from_checkpoint(ckpt_path, map_location=map_location, **overrides)
    return model.eval()


def answer(ckpt_path: str, image: Any, question: str, max_new_tokens: int = 32) -> str:
    """One-shot helper: load ``ckpt_path`` and answer ``question`` about ``image``."""
    return load_checkpoint(ckpt_path).generate_answer(image, question, max_new_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--model-dir", default=None, help="override the model/processor dir")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = load_checkpoint(args.ckpt, args.model_dir, map_location=args.device)
    print(model.generate_answer(args.image, args.question, args.max_new_tokens))


if __name__ == "__main__":
    main()
