"""Batch rows from :class:`~lightning_stream.vlm.transform.VLMTransform` the way the model wants.

Token sequences are padded dynamically (to the longest row of the batch), so short rows
cost no compute for the length of the longest row in the data set. Image arrays follow the
family's layout (:mod:`~lightning_stream.vlm.families`): concatenated over all images of the
batch for most families (Qwen's patches with ``image_grid_thw``, LLaVA-NeXT's tiles with
``image_sizes``), one zero-padded entry per row for Idefics3/SmolVLM. Rows may have 0, 1 or
several images; a key present in any row is batched.

With ``pack=True`` the rows are packed instead of padded: one ``[1, T]`` sequence with no
pad token, per-row ``position_ids`` and the FlashAttention varlen arguments (see
:mod:`~lightning_stream.vlm.packing`).

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

from lightning_stream.vlm.families import COUNT_KEYS, SEQUENCE_KEYS, concat_images, family_of
from lightning_stream.vlm.packing import check_packable, pack_vlm_rows
from lightning_stream.vlm.processor import LazyProcessor
from lightning_stream.vlm.transform import IGNORE_INDEX

log = logging.getLogger(__name__)

__all__ = ["VLMCollator"]


class VLMCollator:
    """Collate ``list[dict]`` rows into ``dict[str, torch.Tensor]``.

    ``input_ids`` are padded with the pad id, ``attention_mask`` and other token-aligned
    ids with 0, ``labels`` with -100. Image arrays (``pixel_values``, ``image_grid_thw``,
    ...) are concatenated along their first dimension over the rows that have them,
    zero-padded first where shapes differ (a varying number of tiles); for families that
    keep a row dimension (Idefics3, SmolVLM) a row without images gets an all-zero entry.
    Per-row counts (``batch_num_images``) become one number per row. Keys that hold no
    array (``image``, ``question``, ``id``, ...) are dropped.

    Args:
        processor: path or hub id of the processor, loaded lazily to read the pad id.
        pad_token_id: the pad id; takes precedence over ``processor``.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        padding_side: ``"right"`` for training, ``"left"`` for batched generation.
        processor_kwargs: extra arguments for ``AutoProcessor.from_pretrained``.
        images_per_row: whether image arrays keep a row dimension; ``None`` asks the
            processor's family (and means no without a processor).
        pack: concatenate the rows into one sequence without padding (``input_ids`` of
            ``[1, T]``, ``T`` the sum of the rows' lengths), with ``position_ids``
            restarting per row, ``cu_seq_lens_q/k``, ``max_length_q/k``, the first label of
            every row ``-100`` and no ``attention_mask``; needs no pad id.

    Raises:
        ValueError: a row's ``labels`` and ``input_ids`` differ in length, rows carry image
            arrays of different ranks, or ``pack=True`` for a family whose rows cannot be
            packed (Mllama).

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
        images_per_row: bool | None = None,
        pack: bool = False,
    ) -> None:
        if processor is None and pad_token_id is None and not pack:
            raise ValueError("VLMCollator needs `processor` or `pad_token_id`")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        if pack and pad_to_multiple_of is not None:
            raise ValueError("pack=True adds no padding: drop pad_to_multiple_of")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.processor = processor
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side
        self.images_per_row = images_per_row
        self.pack = pack
        self._lazy = LazyProcessor(processor, processor_kwargs) if processor else None

    def preflight(self) -> None:
        """Load the processor once in the main process: one that cannot load is a
        :class:`~lightning_stream.vlm.errors.ProcessorLoadError` before any row is read."""
        if self._lazy is not None:
            self._lazy.load()
            if self.pack:
                check_packable(self._lazy.processor)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        for index, row in enumerate(rows):
            if row.get("input_ids") is None:
                raise ValueError(f"row {index} has no 'input_ids'; keys are {sorted(row)}")
            labels = row.get("labels")
            if labels is not None and len(labels) != len(row["input_ids"]):
                raise ValueError(
                    f"row {index}: 'labels' has {len(labels)} tokens but 'input_ids' has "
                    f"{len(row['input_ids'])}; labels must be aligned with the ids (did the "
                    "processor return labels of its own?)"
                )
        if self.pack:
            if self._lazy is not None:
                check_packable(self._lazy.processor)
            return pack_vlm_rows(rows, self._per_row())
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pads = {"input_ids": self._pad_id(), "labels": IGNORE_INDEX}
        keys = list(dict.fromkeys(key for row in rows for key, v in row.items() if v is not None))
        batch: dict[str, torch.Tensor] = {}
        for key in keys:
            values = [row.get(key) for row in rows]
            if key in ("input_ids", "labels") or key in SEQUENCE_KEYS:
                batch[key] = self._pad_sequences(values, lengths, width, pads.get(key, 0), key)
            elif key in COUNT_KEYS:
                batch[key] = torch.tensor([0 if v is None else int(np.asarray(v).sum()) for v in values])
            elif any(isinstance(v, (np.ndarray, torch.Tensor)) for v in values):
                batch[key] = self._images(values, key)
        return batch

    def _images(self, values: list[Any], key: str) -> torch.Tensor:
        arrays = [np.asarray(v) if not isinstance(v, torch.Tensor) else v.numpy() for v in values]
        if self._per_row():
            present = [a for a in arrays if a is not None and a.ndim]
            blank = np.zeros((1, 0, *present[0].shape[2:]), dtype=present[0].dtype)
            arrays = [blank if v is None else a for v, a in zip(values, arrays)]
        else:
            arrays = [a for v, a in zip(values, arrays) if v is not None]
        return torch.from_numpy(np.ascontiguousarray(concat_images(arrays, key)))

    def _per_row(self) -> bool:
        if self.images_per_row is None:
            self.images_per_row = bool(self._lazy) and family_of(self._lazy.processor).images_per_row
        return self.images_per_row

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
        self, sequences: list[Any], lengths: list[int], width: int, value: int, key: str
    ) -> torch.Tensor:
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for index, seq in enumerate(sequences):
            if seq is None:  # a key this row lacks (a text-only row has no mm_token_type_ids)
                fill = {"attention_mask": 1, "labels": IGNORE_INDEX}.get(key, 0)
                seq = [fill] * lengths[index]
            seq = torch.as_tensor(np.asarray(seq), dtype=torch.long)
            if seq.ndim != 1:
                raise ValueError(f"{key!r} of row {index} must be 1-D, got shape {tuple(seq.shape)}")
            if len(seq) != lengths[index]:
                raise ValueError(f"row {index}: {key!r} has {len(seq)} entries but 'input_ids' has {lengths[index]}")
            if self.padding_side == "right":
                out[index, : len(seq)] = seq
            else:
                out[index, width - len(seq) :] = seq
        return out
