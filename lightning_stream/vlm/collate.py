"""Pad rows from :class:`~lightning_stream.vlm.transform.VLMTransform` into a batch.

Padding is dynamic (to the longest row of the batch), so short rows cost no compute for
the length of the longest row in the data set.

Example:
    >>> collate = VLMCollator(pad_token_id=0)
    >>> batch = collate([
    ...     {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
    ...     {"input_ids": [5], "attention_mask": [1], "labels": [5], "question": "ignored"},
    ... ])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [5, 0, 0]], [[-100, 6, 7], [5, -100, -100]])
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch

from lightning_stream.vlm.processor import LazyProcessor
from lightning_stream.vlm.transform import IGNORE_INDEX, SEQUENCE_KEYS

log = logging.getLogger(__name__)

__all__ = ["VLMCollator"]

# Per-image arrays that various processors return; they are stacked. Any other numpy array
# or tensor in a row is stacked too, so new processors work without a change here.
TENSOR_KEYS = (
    "pixel_values",
    "pixel_attention_mask",
    "image_sizes",
    "aspect_ratio_ids",
    "aspect_ratio_mask",
)


class VLMCollator:
    """Collate ``list[dict]`` rows into ``dict[str, torch.Tensor]``.

    ``input_ids`` are padded with the pad id, ``attention_mask`` and other token-aligned
    ids with 0, ``labels`` with -100; per-image arrays (``pixel_values``, ...) are stacked,
    zero-padded first when their shapes differ (processors that split images into a
    varying number of tiles). Keys it does not know and that hold no array (``image``,
    ``question``, ``id``, ...) are dropped.

    Args:
        processor: path or hub id of the processor, loaded lazily to read the pad id.
        pad_token_id: the pad id; takes precedence over ``processor``.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        padding_side: ``"right"`` for training, ``"left"`` for batched generation.
        processor_kwargs: extra arguments for ``AutoProcessor.from_pretrained``.

    Example:
        >>> VLMCollator(processor="data/shapes/model", pad_to_multiple_of=8)  # doctest: +SKIP
    """

    def __init__(
        self,
        processor: str | None = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if processor is None and pad_token_id is None:
            raise ValueError("VLMCollator needs `processor` or `pad_token_id`")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.processor = processor
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side
        self._lazy = LazyProcessor(processor, processor_kwargs) if processor else None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        if "input_ids" not in rows[0]:
            raise ValueError(f"rows have no 'input_ids'; keys are {sorted(rows[0])}")
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pads = {"input_ids": self._pad_id(), "labels": IGNORE_INDEX}
        batch: dict[str, torch.Tensor] = {}
        for key, value in rows[0].items():
            if key == "input_ids" or key == "labels" or key in SEQUENCE_KEYS:
                batch[key] = self._pad_sequences(
                    [row[key] for row in rows], width, pads.get(key, 0), key
                )
            elif key in TENSOR_KEYS or isinstance(value, (np.ndarray, torch.Tensor)):
                batch[key] = _stack([row[key] for row in rows], key)
        return batch

    def _pad_id(self) -> int:
        if self.pad_token_id is None:
            assert self._lazy is not None
            tokenizer = self._lazy.tokenizer
            pad = tokenizer.pad_token_id
            if pad is None:  # many decoder-only tokenizers ship without one
                pad = tokenizer.eos_token_id
            if pad is None:
                raise ValueError(f"processor {self.processor!r} has neither a pad nor an eos id")
            self.pad_token_id = int(pad)
        return self.pad_token_id

    def _pad_sequences(
        self, sequences: list[Any], width: int, value: int, key: str
    ) -> torch.Tensor:
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for index, seq in enumerate(sequences):
            seq = torch.as_tensor(np.asarray(seq), dtype=torch.long)
            if seq.ndim != 1:
                raise ValueError(f"{key!r} of row {index} must be 1-D, got shape {tuple(seq.shape)}")
            if self.padding_side == "right":
                out[index, : len(seq)] = seq
            else:
                out[index, width - len(seq) :] = seq
        return out


def _stack(values: list[Any], key: str) -> torch.Tensor:
    """Stack arrays; zero-pad every dimension to the largest first if the shapes differ."""
    tensors = [torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in values]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors)
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"cannot stack {key!r}: rows have different ranks {sorted(shapes)}")
    target = [max(dims) for dims in zip(*shapes)]
    out = tensors[0].new_zeros((len(tensors), *target))
    for index, t in enumerate(tensors):
        out[(index, *(slice(0, d) for d in t.shape))] = t
    return out
