"""Padding-free batches: the rows of a step laid end to end as one sequence, no pad token.

Padding a batch to its longest row spends compute (and attention memory) on pad tokens;
with rows of very different lengths that is most of the step. Packing instead concatenates
the rows into a single row of ``T = sum(lengths)`` tokens and tells the model where each
row starts, so that no token attends across a row boundary:

- ``position_ids`` restart at 0 for every row. With no ``attention_mask`` in the batch,
  transformers reads the restarts as packed sequences: ``masking_utils`` builds a
  block-diagonal causal mask for ``sdpa``/``eager``/``flex`` from them, and FlashAttention
  runs its varlen kernel.
- ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32, ``[rows + 1]``, the row offsets) and
  ``max_length_q``/``max_length_k`` (ints) are the FlashAttention varlen arguments
  (``FlashAttentionKwargs``), precomputed so the kernel need not derive them from the
  positions in every layer. They also tell the number of rows (for logging).

Labels. A causal LM's loss compares the logits at ``t`` with the label at ``t + 1``, over
the whole packed row; at a boundary the last token of row ``i`` would "predict" the first
token of row ``i + 1``, a prediction the rows never asked for. The label of each row's
first token is therefore ``-100``; unpacked, that label is never a target either (nothing
precedes it), so the packed loss is exactly the sum of the rows' losses. This holds for
HF's own loss (``labels=`` in the forward shifts the same way) and for
:class:`~lightning_stream.vlm.VisionLanguageModel`'s. A row without ``labels`` is plain
causal LM training: its labels are its ``input_ids`` (first one ``-100``).

Example:
    >>> batch = PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7, 8, 9]], [[-100, 6, 7, -100, 9]])
    >>> batch["position_ids"].tolist(), batch["cu_seq_lens_q"].tolist(), batch["max_length_q"]
    ([[0, 1, 2, 0, 1]], [0, 3, 5], 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["PackedCollator", "pack_rows", "packed_rows", "IGNORE_INDEX", "VARLEN_KEYS"]

IGNORE_INDEX = -100  # what torch's cross_entropy (and HF's losses) skip
# The FlashAttention varlen arguments a packed batch carries besides the tokens.
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def pack_rows(
    rows: Sequence[dict[str, Any]],
    sequence_keys: Sequence[str] = (),
    labels_from_input_ids: bool = True,
) -> dict[str, Any]:
    """Concatenate the rows' tokens into one ``[1, T]`` sequence with its packing metadata.

    Args:
        rows: dicts with ``input_ids`` (a list, array or 1-D tensor) and optional ``labels``
            of the same length.
        sequence_keys: other token-aligned keys to concatenate (``token_type_ids``, ...); a
            row without one gets zeros. ``attention_mask`` is never packed: its absence is
            what makes transformers read the restarting ``position_ids`` as row boundaries.
        labels_from_input_ids: whether a row without ``labels`` is causal LM (its labels are
            its ids) or contributes no supervised token.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` (``[1, T]`` int64), the other
        ``sequence_keys`` present in any row, and :data:`VARLEN_KEYS`.

    Raises:
        ValueError: no rows, a row without ``input_ids`` or with an empty one, or a
            token-aligned key whose length differs from the row's ``input_ids``.
    """
    if not rows:
        raise ValueError("cannot pack an empty list of rows")
    ids = [_ids(row, index) for index, row in enumerate(rows)]
    lengths = [len(x) for x in ids]
    labels = []
    for index, (row, row_ids) in enumerate(zip(rows, ids)):
        given = row.get("labels")
        if given is None:
            given = row_ids if labels_from_input_ids else torch.full_like(row_ids, IGNORE_INDEX)
        given = _aligned(given, lengths[index], "labels", index).clone()
        given[0] = IGNORE_INDEX  # no prediction across the boundary (see the module docstring)
        labels.append(given)
    batch: dict[str, Any] = {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
    }
    for key in sequence_keys:
        if key == "attention_mask" or all(row.get(key) is None for row in rows):
            continue
        parts = [
            torch.zeros(n, dtype=torch.long) if row.get(key) is None else _aligned(row[key], n, key, index)
            for index, (row, n) in enumerate(zip(rows, lengths))
        ]
        batch[key] = torch.cat(parts)[None]
    batch.update(varlen_kwargs(lengths))
    return batch


def varlen_kwargs(lengths: Sequence[int]) -> dict[str, Any]:
    """``cu_seq_lens_q/k`` and ``max_length_q/k`` of rows of these lengths."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    longest = int(max(lengths))
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest, "max_length_k": longest}


def packed_rows(batch: dict[str, Any]) -> int | None:
    """How many rows a packed batch holds; ``None`` for a batch that is not packed."""
    cu = batch.get("cu_seq_lens_q") if isinstance(batch, dict) else None
    return None if cu is None else len(cu) - 1


class PackedCollator:
    """``collate_fn`` for text rows: :func:`pack_rows` as a picklable object.

    Give it to the data module instead of the default collation; the batch size becomes
    the number of rows per packed sequence (choose it, or a token budget, so that ``T``
    fits in memory).

    Args:
        sequence_keys: token-aligned keys to pack besides ``input_ids`` and ``labels``.
        labels_from_input_ids: see :func:`pack_rows`.

    Example:
        >>> StreamingDataModule(train=source, collate_fn=PackedCollator(), batch_size=8)  # doctest: +SKIP
    """

    def __init__(self, sequence_keys: Sequence[str] = ("token_type_ids",), labels_from_input_ids: bool = True) -> None:
        self.sequence_keys = tuple(sequence_keys)
        self.labels_from_input_ids = labels_from_input_ids

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return pack_rows(rows, self.sequence_keys, self.labels_from_input_ids)


def _ids(row: dict[str, Any], index: int) -> torch.Tensor:
    value = row.get("input_ids")
    if value is None:
        raise ValueError(f"row {index} has no 'input_ids'; keys are {sorted(row)}")
    ids = _long(value, "input_ids", index)
    if not len(ids):
        raise ValueError(f"row {index} has no tokens: an empty row cannot be packed (filter it out)")
    return ids


def _aligned(value: Any, length: int, key: str, index: int) -> torch.Tensor:
    out = _long(value, key, index)
    if len(out) != length:
        raise ValueError(f"row {index}: {key!r} has {len(out)} entries but 'input_ids' has {length}")
    return out


def _long(value: Any, key: str, index: int) -> torch.Tensor:
    out = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    out = out.to(torch.long)
    if out.ndim != 1:
        raise ValueError(f"{key!r} of row {index} must be 1-D, got shape {tuple(out.shape)}")
    return out
