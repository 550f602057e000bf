"""Padding-free VLM batches: :class:`~lightning_stream.vlm.VLMCollator` with ``pack=True``.

The tokens are packed as for text (:mod:`lightning_stream.packing_collate`): one ``[1, T]``
sequence, no pad token, ``position_ids`` restarting at 0 per row, the label of each row's
first token ``-100`` (so that the last token of a row never learns to predict the next
row), the FlashAttention varlen arguments, and no ``attention_mask``. The images follow in
row order, so the model's own "scatter the image features into the image tokens, in order"
puts every image in its row: flat families' arrays are concatenated as in a padded batch;
Idefics3/SmolVLM's ``(rows, images, ...)`` arrays become one row holding every image.

mRoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). Their text positions are three-dimensional (time,
height, width of each image token), from the model's ``get_rope_index``, which needs the
model's config and is a method of the model. The collator has no model (it runs in
DataLoader workers, from a processor), so it emits the 1-D per-row text positions only,
and :func:`model_inputs`, called by
:class:`~lightning_stream.vlm.VisionLanguageModel` on the batch just before the forward,
completes them with the model's own method: the rows are laid side by side again (an
``attention_mask`` marks each row's tokens), ``get_rope_index`` runs once over them with the
images' grids in row order, and its per-row positions are gathered back into the packed
order. The result is transformers' packed format for these models, ``[4, 1, T]``: the text
positions (which the mask builder reads for the row boundaries) on top of the three mRoPE
rows. Plain 1-D positions would not do: the model would expand them to three rows and,
seeing no text row, build no block-diagonal mask.

What reaches the model: ``input_ids``, ``position_ids``, the image arrays, the
token-aligned ids the family has (``mm_token_type_ids``, ``token_type_ids``) and
``use_cache=False``. ``use_cache=False`` is not optional: transformers reads the row
boundaries from ``position_ids`` only when there is no KV cache, and some models (Qwen2-VL)
build one unless told not to; the rows would then silently attend to each other.

The varlen arguments ``cu_seq_lens_q/k``/``max_length_q/k`` reach the model (through the
forward's ``**kwargs``) only when the batch has no image: several families hand those
``**kwargs`` on to their vision tower too (LLaVA to CLIP, Qwen2/2.5/3-VL to their own varlen
vision attention), where under FlashAttention the text's row offsets would be applied to
image patches (LLaVA) or collide with the tower's own (Qwen: a duplicate keyword). Without them
FlashAttention derives the same offsets from ``position_ids`` (its packed-sequence path), so
only a little speed is at stake; ``sdpa`` and ``eager`` read the boundaries from
``position_ids`` in any case. tests/test_packed_collate.py records what every attention
layer of every family receives.

Example:
    >>> collate = VLMCollator("Qwen/Qwen2-VL-2B-Instruct", pack=True)  # doctest: +SKIP
    >>> batch = collate(rows)  # doctest: +SKIP
    >>> batch["input_ids"].shape, batch["cu_seq_lens_q"]  # doctest: +SKIP
    (torch.Size([1, 412]), tensor([  0, 187, 301, 412], dtype=torch.int32))
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from lightning_stream.packing_collate import VARLEN_KEYS, pack_rows
from lightning_stream.vlm.families import COUNT_KEYS, SEQUENCE_KEYS, concat_images

__all__ = ["pack_vlm_rows", "check_packable", "model_inputs"]

# Processor class -> why its rows cannot be packed. Every family of
# :mod:`~lightning_stream.vlm.zoo` packs (tests/test_packed_collate.py checks each against its
# model, sdpa and eager); a family not listed is taken to pack like them.
_CANNOT_PACK = {
    "MllamaProcessor": (
        "its cross_attention_mask pairs each token with its row's images and tiles "
        "(rows, tokens, images, tiles); packing that mask is not implemented"
    ),
}
_GRID_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def check_packable(processor: Any) -> None:
    """Raise a ``ValueError`` naming the family when its rows cannot be packed."""
    name = processor if isinstance(processor, str) else type(processor).__name__
    if name in _CANNOT_PACK:
        raise ValueError(f"{name} cannot be packed: {_CANNOT_PACK[name]}; use VLMCollator(pack=False)")


def pack_vlm_rows(rows: list[dict[str, Any]], images_per_row: bool) -> dict[str, Any]:
    """One packed sequence of ``rows`` (see the module docstring), images in row order.

    Rows without ``labels`` supervise nothing, as in a padded VLM batch.
    """
    batch = pack_rows(rows, [k for k in SEQUENCE_KEYS if k != "attention_mask"], labels_from_input_ids=False)
    keys = dict.fromkeys(key for row in rows for key, v in row.items() if v is not None)
    for key in keys:
        values = [row.get(key) for row in rows]
        if key in batch or key in ("labels", "attention_mask") or key in SEQUENCE_KEYS:
            continue
        if key in COUNT_KEYS:  # per row, as LLaVA-OneVision reads it (one flag per image)
            batch[key] = torch.tensor([0 if v is None else int(np.asarray(v).sum()) for v in values])
        elif any(isinstance(v, (np.ndarray, torch.Tensor)) for v in values):
            arrays = [np.asarray(v) for v in values if v is not None]
            if images_per_row:  # (1, images, ...) per row -> one row of all the images
                arrays = [a.reshape(-1, *a.shape[2:]) for a in arrays]
            array = np.ascontiguousarray(concat_images(arrays, key))
            batch[key] = torch.from_numpy(array[None] if images_per_row else array)
    return batch


def model_inputs(model: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Complete a packed batch's forward ``inputs`` for ``model`` (see the module docstring)."""
    inputs = {k: v for k, v in inputs.items() if k not in VARLEN_KEYS}
    inputs["use_cache"] = False  # a KV cache hides the row boundaries
    rope_index = _rope_index(model)
    if rope_index is not None:
        inputs["position_ids"] = mrope_position_ids(rope_index, batch)
    if not any(key.startswith("pixel_values") for key in inputs):  # nothing for a vision tower
        inputs.update({k: batch[k] for k in VARLEN_KEYS if k in batch})
    return inputs


def mrope_position_ids(rope_index: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``[4, 1, T]``: the packed text positions over the model's per-row mRoPE positions."""
    ids = batch["input_ids"][0]
    types = batch.get("mm_token_type_ids")
    types = torch.zeros_like(ids) if types is None else types[0]
    bounds = batch["cu_seq_lens_q"].tolist()
    lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    side_ids = ids.new_zeros(len(lengths), max(lengths))
    side_types = torch.zeros_like(side_ids)
    mask = torch.zeros_like(side_ids, dtype=torch.bool)
    for row, (start, length) in enumerate(zip(bounds, lengths)):
        side_ids[row, :length] = ids[start : start + length]
        side_types[row, :length] = types[start : start + length]
        mask[row, :length] = True
    accepted = inspect.signature(rope_index).parameters
    grids = {k: batch[k] for k in _GRID_KEYS if k in batch and k in accepted}
    positions, _ = rope_index(side_ids, mm_token_type_ids=side_types, attention_mask=mask.long(), **grids)
    mrope = positions[:, mask][:, None]  # row-major: the packed order
    text = batch["position_ids"].to(mrope)
    return torch.cat([text[None], mrope], dim=0)


def _rope_index(model: Any) -> Any:
    """The model's multimodal rope index method (Qwen2/2.5/3-VL keep it on the inner model)."""
    for candidate in (model, getattr(model, "model", None)):
        method = getattr(candidate, "get_rope_index", None)
        if callable(method):
            return method
    return None
