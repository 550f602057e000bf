"""Turn (image, question, answer) rows into model inputs with answer-only labels.

The prompt (system turn, user turn with the image and the question, generation prompt) and
the answer are tokenized separately and concatenated. That puts the label boundary exactly
where generation starts at inference time, for any processor with a chat template, without
relying on ``{% generation %}`` markers few templates have.

Truncation to ``max_length`` never cuts image tokens:

1. the answer is cut from the right (its end-of-turn token is then lost);
2. if the question is long too, it is shortened (by tokens, re-rendered through the
   template) until the answer keeps at least one token and up to half of the room that
   the image and the template leave;
3. if the image and the template alone need more than ``max_length - 1`` tokens, a
   ``ValueError`` names the row: raise ``max_length`` or shrink the image resolution.

Example:
    >>> t = VLMTransform(processor="data/shapes/model", max_length=128)
    >>> out = t({"image": [img], "question": ["What color is the shape?"], "answer": ["red"]})
    >>> sorted(out)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'labels', 'pixel_values']
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lightning_stream.vlm.images import load_image
from lightning_stream.vlm.processor import LazyProcessor, render_prompt

log = logging.getLogger(__name__)

__all__ = ["VLMTransform", "IGNORE_INDEX", "SEQUENCE_KEYS"]

IGNORE_INDEX = -100
# Processor outputs aligned with ``input_ids``; the answer part is filled with zeros.
SEQUENCE_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")


class VLMTransform:
    """Batched map: ``dict[str, list]`` of rows to ``dict[str, list]`` of model inputs.

    Args:
        processor: path or hub id of an ``AutoProcessor`` with a chat template. Loaded on
            first call, in the process that calls (DataLoader workers load their own).
        image_column, question_column, answer_column: input column names. An answer that
            is a list of strings (VQA-style reference answers) contributes its first.
        max_length: the most tokens a row may have, image tokens included; ``None`` keeps
            everything.
        system_prompt: optional system turn put before every user turn.
        processor_kwargs: extra arguments for ``AutoProcessor.from_pretrained``, e.g.
            ``{"do_image_splitting": False}`` for SmolVLM.

    Returns (per row): ``input_ids``, ``attention_mask``, ``labels`` (lists of ints; labels
    are ``-100`` except on the answer tokens and the end-of-turn token that follows them),
    ``pixel_values`` (``float32`` numpy array) and whatever else the processor returns per
    image (``image_sizes``, ``pixel_attention_mask``, ...), batch dimension removed.

    Raises:
        ValueError: a row's image is missing or corrupt (the message names the column), a
            question or answer is not a string, or the image needs more tokens than
            ``max_length`` allows.

    Example:
        >>> t = VLMTransform("data/shapes/model", max_length=128)
        >>> batch = t({"image": [pil], "question": ["Where is it?"], "answer": ["left"]})
        >>> len(batch["input_ids"][0]) == len(batch["labels"][0])  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        processor: str,
        image_column: str = "image",
        question_column: str = "question",
        answer_column: str = "answer",
        max_length: int | None = 512,
        system_prompt: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.processor = processor
        self.image_column = image_column
        self.question_column = question_column
        self.answer_column = answer_column
        self.max_length = max_length
        self.system_prompt = system_prompt
        self._lazy = LazyProcessor(processor, processor_kwargs)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for column in (self.image_column, self.question_column, self.answer_column):
            if column not in batch:
                raise ValueError(
                    f"column {column!r} not in batch; columns are {sorted(batch)}"
                )
        images = batch[self.image_column]
        questions = batch[self.question_column]
        answers = batch[self.answer_column]
        out: dict[str, list] = {}
        ids = batch.get("id")
        for index, (image, question, answer) in enumerate(zip(images, questions, answers)):
            row = f"row {index}" if ids is None else f"row {index} (id={ids[index]!r})"
            encoded = self.encode(image, question, answer, row=row)
            for key, value in encoded.items():
                out.setdefault(key, []).append(value)
        return out

    def encode(
        self, image: Any, question: str, answer: str, row: str = "row 0"
    ) -> dict[str, Any]:
        """Encode one row; ``row`` names it in error messages."""
        if isinstance(answer, (list, tuple)) and answer and isinstance(answer[0], str):
            answer = answer[0]  # VQA-style lists of reference answers: train on the first
        for name, column, text in (
            ("question", self.question_column, question),
            ("answer", self.answer_column, answer),
        ):
            if not isinstance(text, str):
                raise ValueError(
                    f"{name} column {column!r}: {row}: expected a string, "
                    f"got {type(text).__name__}"
                )
        try:
            picture = load_image(image, column=self.image_column)
        except ValueError as err:
            raise ValueError(f"{err}; at {row}") from err.__cause__
        proc = self._lazy.processor
        tokenizer = self._lazy.tokenizer

        prompt_text = render_prompt(proc, question, None, self.system_prompt)
        full_text = render_prompt(proc, question, answer, self.system_prompt)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                f"the chat template of {self.processor!r} does not render the prompt as a "
                "prefix of the conversation, so the answer cannot be located"
            )
        answer_ids = _tokenize(tokenizer, full_text[len(prompt_text):])

        expanded = self._process(proc, picture, prompt_text)
        prompt_len = len(expanded["input_ids"][0])
        if self.max_length is not None and prompt_len + len(answer_ids) > self.max_length:
            question = self._shorten_question(question, prompt_text, prompt_len, answer_ids, row)
            if question is not None:
                prompt_text = render_prompt(proc, question, None, self.system_prompt)
                expanded = self._process(proc, picture, prompt_text)
                prompt_len = len(expanded["input_ids"][0])
                if prompt_len >= self.max_length:  # decode/re-encode drift; never seen
                    raise ValueError(f"{row}: cannot shorten the question to fit max_length")
            answer_ids = answer_ids[: self.max_length - prompt_len]

        prompt_ids = [int(i) for i in expanded["input_ids"][0]]
        labels = [IGNORE_INDEX] * len(prompt_ids) + _answer_labels(tokenizer, answer_ids)
        result: dict[str, Any] = {
            "input_ids": prompt_ids + answer_ids,
            "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
            "labels": labels,
        }
        for key, value in expanded.items():
            if key in ("input_ids", "attention_mask"):
                continue
            array = np.asarray(value)
            if key in SEQUENCE_KEYS:
                result[key] = [int(v) for v in array[0]] + [0] * len(answer_ids)
            elif key == "pixel_values":
                result[key] = array[0].astype(np.float32, copy=False)
            else:
                result[key] = array[0]
        return result

    def _process(self, proc: Any, picture: Any, prompt_text: str) -> Any:
        # The chat template already renders bos and role markers; adding special tokens
        # again would double the bos, as ``apply_chat_template(tokenize=True)`` knows too.
        return proc(
            images=[picture], text=prompt_text, add_special_tokens=False, return_tensors="np"
        )

    def _shorten_question(
        self, question: str, prompt_text: str, prompt_len: int, answer_ids: list[int], row: str
    ) -> str | None:
        """The question cut so that it and the answer share the room the image leaves.

        Returns ``None`` when the question may stay whole (only the answer is cut).
        """
        assert self.max_length is not None
        proc, tokenizer = self._lazy.processor, self._lazy.tokenizer
        # Image placeholders expand inside the processor; measure that once, then size
        # candidate prompts with the (much cheaper) tokenizer alone.
        extra = prompt_len - len(_tokenize(tokenizer, prompt_text))
        question_ids = _tokenize(tokenizer, question)

        def measure(n_tokens: int) -> tuple[str, int]:
            text = tokenizer.decode(question_ids[:n_tokens], skip_special_tokens=False)
            rendered = render_prompt(proc, text, None, self.system_prompt)
            return text, len(_tokenize(tokenizer, rendered)) + extra

        bare = measure(0)[1]
        room = self.max_length - bare
        if room < 1:
            raise ValueError(
                f"{row}: the image and the chat template alone need {bare} tokens, which "
                f"leaves no room for an answer within max_length={self.max_length}; raise "
                "max_length or lower the image resolution"
            )
        # The answer gets at least one token and at most half the room; the question the rest.
        budget = self.max_length - min(len(answer_ids), max(1, room // 2))
        if prompt_len <= budget:
            return None
        lo, hi = 0, len(question_ids)
        while lo < hi:  # the longest question prefix whose prompt fits the budget
            mid = (lo + hi + 1) // 2
            if measure(mid)[1] <= budget:
                lo = mid
            else:
                hi = mid - 1
        log.debug("%s: question cut to %d of %d tokens", row, lo, len(question_ids))
        return measure(lo)[0]


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_labels(tokenizer: Any, answer_ids: list[int]) -> list[int]:
    """Labels for the answer part: supervise up to and including the end-of-turn token.

    Whatever the template puts after that token (a newline, say) is never generated, so
    it is masked.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    labels = list(answer_ids)
    for index, token in enumerate(answer_ids):
        if token in special:
            labels[index + 1 :] = [IGNORE_INDEX] * (len(answer_ids) - index - 1)
            break
    return labels
