"""PaliGemma: no chat format; a prompt (prefix) and an answer (suffix) instead.

PaliGemma's processor builds ``<image>... <bos> prompt \\n answer <eos>`` itself when given
``suffix=``, with ``token_type_ids`` 0 on the prefix (attended bidirectionally) and 1 on the
answer (causal), and labels on the answer and its ``<eos>``. Without ``suffix`` it returns
labels that are all -100 and marks the answer as prefix: the answer could see itself. So a
row is one user turn and one assistant turn, encoded through that path.

Example:
    >>> encode_prefix_suffix(processor, conv, max_length=256, row="row 0")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_stream.vlm.conversation import Conversation

__all__ = ["encode_prefix_suffix"]

_IGNORE = -100


def encode_prefix_suffix(processor: Any, conv: Conversation, max_length: int | None, row: str) -> dict[str, Any]:
    """Encode a one-question, one-answer conversation as PaliGemma's prefix and suffix."""
    prefix, suffix = _prefix_and_suffix(conv, row)
    tokenizer = processor.tokenizer
    if conv.images:
        # The image tokens go first, one run per image; saying so keeps the processor quiet.
        text = processor.image_token * len(conv.images) + prefix
        out = processor(text=text, images=conv.images, suffix=suffix, return_tensors="np")
        result = {key: np.asarray(value)[0] for key, value in out.items() if key != "pixel_values"}
        result["pixel_values"] = np.asarray(out["pixel_values"], dtype=np.float32)
    else:  # the processor wants images; a text-only row is built the same way by hand
        head = [tokenizer.bos_token_id] + _ids(tokenizer, prefix + "\n")
        tail = _ids(tokenizer, suffix) + [tokenizer.eos_token_id]
        result = {
            "input_ids": np.asarray(head + tail),
            "token_type_ids": np.asarray([0] * len(head) + [1] * len(tail)),
            "attention_mask": np.ones(len(head) + len(tail), dtype=np.int64),
            "labels": np.asarray([_IGNORE] * len(head) + tail),
        }
    sequences = ("input_ids", "token_type_ids", "attention_mask", "labels")
    length = len(result["input_ids"])
    if max_length is not None and length > max_length:
        answer_start = int(np.argmax(result["token_type_ids"]))
        if answer_start >= max_length:
            raise ValueError(
                f"{row}: the image and the prompt alone need {answer_start} tokens, which "
                f"leaves no room for an answer within max_length={max_length}; raise "
                "max_length or shorten the prompt"
            )
        for key in sequences:
            result[key] = result[key][:max_length]
    for key in sequences:
        result[key] = [int(v) for v in result[key]]
    return result


def _prefix_and_suffix(conv: Conversation, row: str) -> tuple[str, str]:
    turns = [m for m in conv.messages if m["role"] != "system"]
    roles = [m["role"] for m in turns]
    if roles != ["user", "assistant"]:
        raise ValueError(
            f"{row}: PaliGemma has no chat format: a row must be one user turn and one "
            f"assistant turn, got roles {roles}; split multi-turn conversations into rows"
        )
    system = [m for m in conv.messages if m["role"] == "system"]
    texts = [p["text"] for m in system + turns[:1] for p in m["content"] if p["type"] == "text"]
    answer = [p["text"] for p in turns[1]["content"] if p["type"] == "text"]
    return " ".join(texts), " ".join(answer)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
