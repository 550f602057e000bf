"""Turn rows of (images, conversation) into model inputs with labels on the assistant turns.

Rows come in any of the layouts of :mod:`~lightning_stream.vlm.conversation` (question and
answer; LLaVA ``conversations``; HF ``messages``; the_cauldron ``texts``), with 0, 1 or
several images. The chat template renders the conversation; it is then cut at the places
where generation starts and ends (the generation prompt before each assistant turn, the end
of that turn), and each piece is tokenized on its own: the prompt pieces through the
processor (which expands the image placeholders), the assistant pieces with the tokenizer.
That puts every label boundary exactly where generation starts at inference time, for any
processor with a chat template, without ``{% generation %}`` markers few templates have.

Labels cover each assistant turn up to and including its end-of-turn token; system, user,
image tokens and the template's glue (a newline after the end of turn) are ``-100``.
PaliGemma, which has no chat format, goes through its processor's ``suffix`` path instead.

Truncation to ``max_length`` never cuts image tokens:

1. whole exchanges (user turn + assistant turn) are dropped from the end;
2. if the first exchange alone is too long, its answer is cut from the right, and a long
   last question text is shortened (by tokens, re-rendered through the template) until the
   answer keeps at least one token and up to half of the room the images leave;
3. if the images and the template alone need more than ``max_length - 1`` tokens, a
   ``ValueError`` names the row: raise ``max_length`` or shrink the image resolution.

Example:
    >>> t = VLMTransform(processor="data/shapes/model", max_length=128)
    >>> out = t({"image": [img], "question": ["What color is the shape?"], "answer": ["red"]})
    >>> sorted(out)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'labels', 'pixel_values']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_stream.vlm.conversation import (
    FORMATS,
    Columns,
    Conversation,
    detect_format,
    read_row,
)
from lightning_stream.vlm.families import COUNT_KEYS, SEQUENCE_KEYS, concat_images, family_of
from lightning_stream.vlm.images import load_image
from lightning_stream.vlm.processor import LazyProcessor

log = logging.getLogger(__name__)

__all__ = ["VLMTransform", "IGNORE_INDEX", "SEQUENCE_KEYS"]

IGNORE_INDEX = -100


@dataclass
class _Piece:
    """A tokenized stretch of the conversation: a prompt (with images) or an assistant turn."""

    ids: list[int]
    labels: list[int]
    extras: dict[str, Any] = field(default_factory=dict)  # sequence keys and image arrays


class VLMTransform:
    """Batched map: ``dict[str, list]`` of rows to ``dict[str, list]`` of model inputs.

    Args:
        processor: path or hub id of an ``AutoProcessor`` with a chat template (PaliGemma
            needs none). Loaded on first call, in the process that calls (DataLoader
            workers load their own).
        image_column: column with one image, a list of images, or ``None`` (``qa`` and
            ``llava`` rows).
        question_column, answer_column: ``qa`` rows. An answer that is a list of strings
            (VQA-style reference answers) contributes its first.
        max_length: the most tokens a row may have, image tokens included; ``None`` keeps
            everything.
        system_prompt: a system turn put first in conversations that have none.
        processor_kwargs: extra arguments for ``AutoProcessor.from_pretrained``, e.g.
            ``{"do_image_splitting": False}`` for SmolVLM.
        format: ``"auto"`` (from the columns), or one of ``"qa"``, ``"llava"``,
            ``"messages"``, ``"cauldron"``.
        conversation_column: the column with the turns, when not ``messages`` /
            ``conversations`` / ``texts``.
        images_column: column with a list of images (``messages`` and ``cauldron`` rows);
            whichever of ``images_column`` and ``image_column`` a batch has is used.

    Returns (per row): ``input_ids``, ``attention_mask``, ``labels`` (lists of ints),
    the processor's token-aligned ids (``token_type_ids``, ``mm_token_type_ids``) and its
    image arrays for all the row's images (``pixel_values`` as ``float32``,
    ``image_grid_thw``, ``image_sizes``, ``pixel_attention_mask``, ...), in the layout
    :class:`~lightning_stream.vlm.VLMCollator` batches. A key a row lacks (a text-only row
    has no ``pixel_values``) is ``None`` for that row.

    Raises:
        ValueError: a column is missing; a row's image is missing or corrupt (the message
            names the column and the row); a text is not a string; the row's turns are
            malformed; the images need more tokens than ``max_length`` allows.

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
        format: str = "auto",
        conversation_column: str | None = None,
        images_column: str = "images",
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
        self.processor = processor
        self.image_column = image_column
        self.question_column = question_column
        self.answer_column = answer_column
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.format = format
        self.columns = Columns(image_column, images_column, question_column, answer_column, conversation_column)
        self._lazy = LazyProcessor(processor, processor_kwargs)

    # ------------------------------------------------------------------ rows
    def preflight(self) -> None:
        """Load the processor once in the main process: one that cannot load is a
        :class:`~lightning_stream.vlm.errors.ProcessorLoadError` before any row is read."""
        if self._lazy is not None:
            self._lazy.load()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fmt = self.format if self.format != "auto" else detect_format(batch, self.columns)
        if fmt == "qa" and self.format == "auto":
            for column in (self.question_column, self.answer_column):
                if column not in batch:
                    raise ValueError(f"column {column!r} not in batch; columns are {sorted(batch)}")
        size = len(next(iter(batch.values()))) if batch else 0
        ids = batch.get("id")
        encoded = []
        for index in range(size):
            row = {key: values[index] for key, values in batch.items()}
            name = f"row {index}" if ids is None else f"row {index} (id={ids[index]!r})"
            encoded.append(self.encode_conversation(read_row(row, fmt, self.columns, name), name))
        keys = list(dict.fromkeys(key for row in encoded for key in row))
        return {key: [row.get(key) for row in encoded] for key in keys}

    def encode(self, image: Any, question: str, answer: str, row: str = "row 0") -> dict[str, Any]:
        """Encode one (image, question, answer) row; ``row`` names it in error messages."""
        values = {self.columns.image: image, self.columns.question: question, self.columns.answer: answer}
        return self.encode_conversation(read_row(values, "qa", self.columns, row), row)

    def encode_conversation(self, conv: Conversation, row: str = "row 0") -> dict[str, Any]:
        """Encode one :class:`~lightning_stream.vlm.conversation.Conversation`."""
        pictures = []
        for value in conv.images:
            try:
                pictures.append(load_image(value, column=conv.image_column))
            except ValueError as err:
                raise ValueError(f"{err}; at {row}") from err.__cause__
        conv = Conversation(self._with_system(conv.messages), pictures, conv.image_column)
        if family_of(self._lazy.processor).prefix_suffix:
            from lightning_stream.vlm.prefix_suffix import encode_prefix_suffix

            return encode_prefix_suffix(self._lazy.processor, conv, self.max_length, row)
        pieces = self._fit(self._pieces(conv, row), conv, row)
        return _assemble(pieces, family_of(self._lazy.processor).images_per_row)

    # ------------------------------------------------------------- pieces
    def _pieces(self, conv: Conversation, row: str) -> list[_Piece]:
        """Prompt and answer pieces, alternating: prompt 0, answer 0, prompt 1, answer 1, ..."""
        full = self._render(conv.messages, generation=False)
        pieces: list[_Piece] = []
        done, used, start = 0, 0, 0
        for index, message in enumerate(conv.messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(conv.messages[:index], generation=True)
            upto = self._render(conv.messages[: index + 1], generation=False)
            if not (full.startswith(prompt) and full.startswith(upto) and done <= len(prompt)):
                raise ValueError(
                    f"{row}: the chat template of {self.processor!r} does not render each turn "
                    "as a prefix of the conversation, so the assistant turns cannot be located"
                )
            count = sum(p["type"] == "image" for m in conv.messages[start:index] for p in m["content"])
            pieces.append(self._prompt(full[done : len(prompt)], conv.images[used : used + count]))
            pieces.append(self._answer(full[len(prompt) : len(upto)]))
            done, used, start = len(upto), used + count, index + 1
        return pieces

    def _prompt(self, text: str, images: list[Any]) -> _Piece:
        if not images:
            ids = _tokenize(self._lazy.tokenizer, text)
            return _Piece(ids, [IGNORE_INDEX] * len(ids))
        # The chat template already renders bos and role markers; adding special tokens
        # again would double the bos, as ``apply_chat_template(tokenize=True)`` knows too.
        # Nested: the images of one sample (a flat list reads as one image per sample).
        out = self._lazy.processor(images=[images], text=[text], add_special_tokens=False, return_tensors="np")
        ids = [int(i) for i in np.asarray(out["input_ids"])[0]]
        extras = {}
        for key, value in out.items():
            if key in ("input_ids", "attention_mask", "labels"):
                continue
            array = np.asarray(value)
            extras[key] = [int(v) for v in array[0]] if key in SEQUENCE_KEYS else array
        return _Piece(ids, [IGNORE_INDEX] * len(ids), extras)

    def _answer(self, text: str) -> _Piece:
        ids = _tokenize(self._lazy.tokenizer, text)
        return _Piece(ids, _answer_labels(self._special_ids(), ids))

    # ---------------------------------------------------------- truncation
    def _fit(self, pieces: list[_Piece], conv: Conversation, row: str) -> list[_Piece]:
        limit = self.max_length
        if limit is None or sum(len(p.ids) for p in pieces) <= limit:
            return pieces
        total = 0
        for keep in range(0, len(pieces), 2):  # whole exchanges, from the start
            size = len(pieces[keep].ids) + len(pieces[keep + 1].ids)
            if total + size > limit:
                break
            total += size
        else:
            keep = len(pieces)
        if keep:
            log.debug("%s: %d of %d exchanges fit max_length", row, keep // 2, len(pieces) // 2)
            return pieces[:keep]
        prompt, answer = pieces[0], pieces[1]
        prompt = self._shorten_question(conv, prompt, answer, row)
        room = limit - len(prompt.ids)
        answer = _Piece(answer.ids[:room], answer.labels[:room])
        return [prompt, answer]

    def _shorten_question(self, conv: Conversation, prompt: _Piece, answer: _Piece, row: str) -> _Piece:
        """The first prompt, its last text cut so that it and the answer share the room the
        images leave (unchanged when the question may stay whole)."""
        assert self.max_length is not None
        tokenizer = self._lazy.tokenizer
        first = next(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
        head = conv.messages[:first]
        target = _last_text_part(head)
        question_ids = _tokenize(tokenizer, target["text"]) if target else []
        # Image placeholders expand inside the processor; measure that once, then size
        # candidate prompts with the (much cheaper) tokenizer alone.
        text = self._render(head, generation=True)
        extra = len(prompt.ids) - len(_tokenize(tokenizer, text))

        def measure(n_tokens: int) -> tuple[str, int]:
            cut = tokenizer.decode(question_ids[:n_tokens], skip_special_tokens=False)
            if target is None:
                return cut, len(prompt.ids)
            original = target["text"]
            target["text"] = cut
            try:
                rendered = self._render(head, generation=True)
            finally:
                target["text"] = original
            return cut, len(_tokenize(tokenizer, rendered)) + extra

        bare = measure(0)[1]
        room = self.max_length - bare
        if room < 1:
            raise ValueError(
                f"{row}: the image and the chat template alone need {bare} tokens, which "
                f"leaves no room for an answer within max_length={self.max_length}; raise "
                "max_length or lower the image resolution"
            )
        # The answer gets at least one token and at most half the room; the question the rest.
        budget = self.max_length - min(len(answer.ids), max(1, room // 2))
        if len(prompt.ids) <= budget or target is None:
            return prompt
        lo, hi = 0, len(question_ids)
        while lo < hi:  # the longest question prefix whose prompt fits the budget
            mid = (lo + hi + 1) // 2
            if measure(mid)[1] <= budget:
                lo = mid
            else:
                hi = mid - 1
        log.debug("%s: question cut to %d of %d tokens", row, lo, len(question_ids))
        original = target["text"]
        target["text"] = measure(lo)[0]
        try:
            count = sum(p["type"] == "image" for m in head for p in m["content"])
            shortened = self._prompt(self._render(head, generation=True), conv.images[:count])
        finally:
            target["text"] = original
        if len(shortened.ids) >= self.max_length:  # decode/re-encode drift; never seen
            raise ValueError(f"{row}: cannot shorten the question to fit max_length")
        return shortened

    # --------------------------------------------------------------- helpers
    def _render(self, messages: list[dict[str, Any]], generation: bool) -> str:
        proc, tokenizer = self._lazy.processor, self._lazy.tokenizer
        template = getattr(proc, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError(
                f"processor {self.processor!r} has no chat template, so conversations cannot be "
                "rendered; give it one (processor.chat_template = ...; save_pretrained)"
            )
        # The tokenizer renders the processor's template: some processors' own
        # apply_chat_template reach for their video processor, which may not be loaded.
        return tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=generation, tokenize=False
        )

    def _with_system(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.system_prompt or any(m["role"] == "system" for m in messages):
            return messages
        system = {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
        return [system, *messages]

    def _special_ids(self) -> set[int]:
        tokenizer = self._lazy.tokenizer
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(token, "special", False):
                special.add(int(token_id))
        return special


def _last_text_part(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        for part in reversed(message["content"]):
            if part["type"] == "text":
                return part
        return None
    return None


def _assemble(pieces: list[_Piece], images_per_row: bool) -> dict[str, Any]:
    ids = [t for p in pieces for t in p.ids]
    result: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [t for p in pieces for t in p.labels],
    }
    keys = list(dict.fromkeys(k for p in pieces for k in p.extras))
    for key in keys:
        if key in SEQUENCE_KEYS:
            result[key] = [v for p in pieces for v in p.extras.get(key, [0] * len(p.ids))]
            continue
        arrays = [p.extras[key] for p in pieces if key in p.extras]
        if key in COUNT_KEYS:
            result[key] = np.asarray([int(sum(np.asarray(a).sum() for a in arrays))])
            continue
        if images_per_row:  # (1, images, ...) per call: join along the images
            joined = concat_images([a[0] for a in arrays], key)[None]
        else:
            joined = concat_images(arrays, key)
        result[key] = joined.astype(np.float32, copy=False) if key == "pixel_values" else joined
    return result


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_labels(special: set[int], answer_ids: list[int]) -> list[int]:
    """Labels for an assistant turn: supervise up to and including the end-of-turn token.

    Whatever the template puts after that token (a newline, say) is never generated, so
    it is masked.
    """
    labels = list(answer_ids)
    for index, token in enumerate(answer_ids):
        if token in special:
            labels[index + 1 :] = [IGNORE_INDEX] * (len(answer_ids) - index - 1)
            break
    return labels
