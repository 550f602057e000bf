"""What each VLM family's processor returns, and how its forward wants a batch of it.

Most families (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2/2.5/3-VL, Gemma 3, PaliGemma)
take their per-image arrays *flat*: every image of the batch, row after row, along the first
dimension (``pixel_values`` of ``(images, ...)`` or Qwen's ``(patches, dim)`` with
``image_grid_thw``, ``image_sizes``). Idefics2/3 and SmolVLM keep a *row* dimension:
``(rows, images, 3, H, W)`` padded with all-zero images (and ``pixel_attention_mask``), which
the model drops. PaliGemma is no chat model: prompt and answer go through the processor's
``suffix`` path, which also marks the answer causal (``token_type_ids = 1``).

Families not listed here are taken as flat, which is what new processors do.

Example:
    >>> family_of("Idefics3Processor").images_per_row
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Family", "family_of", "SEQUENCE_KEYS", "COUNT_KEYS", "concat_images"]

# Processor outputs aligned with ``input_ids``.
SEQUENCE_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")
# One number per row: how many images it has (LLaVA-OneVision's ``batch_num_images``).
COUNT_KEYS = ("batch_num_images",)


@dataclass(frozen=True)
class Family:
    name: str
    images_per_row: bool = False  # arrays are (rows, images, ...), zero-padded per row
    prefix_suffix: bool = False  # no chat template: processor(text=prompt, suffix=answer)


_FAMILIES = {
    "Idefics2Processor": Family("idefics2", images_per_row=True),
    "Idefics3Processor": Family("idefics3", images_per_row=True),
    "SmolVLMProcessor": Family("smolvlm", images_per_row=True),
    "PaliGemmaProcessor": Family("paligemma", prefix_suffix=True),
}
_FLAT = Family("flat")


def family_of(processor: Any) -> Family:
    """The :class:`Family` of a processor (an instance, or its class name)."""
    name = processor if isinstance(processor, str) else type(processor).__name__
    return _FAMILIES.get(name, _FLAT)


def concat_images(arrays: list[np.ndarray], key: str) -> np.ndarray:
    """Concatenate along the first dimension, zero-padding the others to the largest.

    Both layouts meet here: flat arrays of several images (or several rows) become one flat
    array; per-row arrays ``(1, images, ...)`` of several rows become ``(rows, images, ...)``.
    """
    arrays = [np.asarray(a) for a in arrays]
    ranks = {a.ndim for a in arrays}
    if len(ranks) != 1:
        shapes = sorted({a.shape for a in arrays})
        raise ValueError(
            f"cannot concatenate {key!r}: arrays have different ranks {shapes}; rows made by "
            "different processors (or families) cannot share a batch"
        )
    target = [max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays))]
    padded = []
    for array in arrays:
        if list(array.shape[1:]) != target:
            pad = [(0, 0)] + [(0, t - s) for t, s in zip(target, array.shape[1:])]
            array = np.pad(array, pad)
        padded.append(array)
    return np.concatenate(padded, axis=0)
