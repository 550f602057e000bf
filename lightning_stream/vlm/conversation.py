"""Rows of the common instruction-data layouts, read into one shape: chat messages + images.

Formats (detected from the columns, or named):

- ``qa``: ``image`` (one image, a list, or ``None``), ``question``, ``answer`` (a string, or
  a list of reference answers of which the first is used).
- ``llava``: ``conversations`` = ``[{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}, ...]`` with ``image`` (one or a list). ``<image>`` marks
  where each image goes; without any, the images open the first user turn.
- ``messages``: Hugging Face chat ``messages`` = ``[{"role": "user", "content": [{"type":
  "image"}, {"type": "text", "text": ...}]}, ...]`` with ``images`` (a list). An image part
  may carry its image inline (``{"type": "image", "image": ...}``).
- ``cauldron``: ``images`` + ``texts`` = ``[{"user": ..., "assistant": ...}, ...]`` (the
  layout of HuggingFaceM4/the_cauldron); the images open the first user turn.

A row without images (``None`` or ``[]``) is a text-only conversation.

Example:
    >>> conv = read_row({"question": "Color?", "answer": "red", "image": None}, "qa", COLUMNS)
    >>> conv.messages[1]
    {'role': 'assistant', 'content': [{'type': 'text', 'text': 'red'}]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conversation", "Columns", "COLUMNS", "FORMATS", "detect_format", "read_row"]

FORMATS = ("qa", "llava", "messages", "cauldron")
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
_PLACEHOLDER = re.compile(r"<image>")


@dataclass
class Conversation:
    """Chat messages with ``{"type": "image"}`` parts, and the images in their order."""

    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    image_column: str = "image"  # where the images came from, for error messages


@dataclass(frozen=True)
class Columns:
    """Where each format keeps its parts; ``conversation=None`` means the format's usual name."""

    image: str = "image"
    images: str = "images"
    question: str = "question"
    answer: str = "answer"
    conversation: str | None = None

    def turns(self, fmt: str) -> str:
        default = {"llava": "conversations", "messages": "messages", "cauldron": "texts"}
        return self.conversation or default[fmt]

    def image_source(self, names: Any) -> str | None:
        """The column that holds a row's images: the first of ``images``/``image`` present."""
        for name in (self.images, self.image):
            if name in names:
                return name
        return None


COLUMNS = Columns()


def detect_format(batch: dict[str, list], columns: Columns) -> str:
    """The format of a batch, from its columns (and, for a named turns column, its content)."""
    if columns.conversation is not None:
        if columns.conversation not in batch:
            raise ValueError(f"conversation column {columns.conversation!r} not in batch; columns are {sorted(batch)}")
        for value in batch[columns.conversation]:
            if value:
                return _format_of_turn(value[0], columns.conversation)
        return "messages"
    for fmt in ("messages", "llava", "cauldron"):
        if columns.turns(fmt) in batch:
            return fmt
    if columns.question in batch and columns.answer in batch:
        return "qa"
    for present, missing in ((columns.question, columns.answer), (columns.answer, columns.question)):
        if present in batch:
            raise ValueError(f"column {missing!r} not in batch; columns are {sorted(batch)}")
    raise ValueError(
        f"cannot tell the row format from the columns {sorted(batch)}: expected "
        f"'messages' (+ 'images'), 'conversations' (LLaVA, + 'image'), 'texts' (the_cauldron, "
        f"+ 'images'), or {columns.question!r} + {columns.answer!r} (+ {columns.image!r}); "
        "name yours with VLMTransform(format=..., conversation_column=..., question_column=...)"
    )


def _format_of_turn(turn: Any, column: str) -> str:
    if isinstance(turn, dict):
        if "role" in turn:
            return "messages"
        if "from" in turn:
            return "llava"
        if "user" in turn or "assistant" in turn:
            return "cauldron"
    raise ValueError(
        f"conversation column {column!r}: cannot tell the format of a turn {_short(turn)}; "
        "expected {'role', 'content'}, {'from', 'value'} or {'user', 'assistant'}"
    )


def read_row(row: dict[str, Any], fmt: str, columns: Columns, name: str = "row 0") -> Conversation:
    """Read one row (a dict of column values) of format ``fmt`` into a :class:`Conversation`.

    Raises:
        ValueError: a column is missing, a turn is malformed, a text is not a string, the
            images and the ``<image>`` marks disagree, or there is no assistant turn. The
            message names the column and the row.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    source = columns.image_source(row)
    images = _image_list(row.get(source) if source else None)
    required = [columns.question, columns.answer] if fmt == "qa" else [columns.turns(fmt)]
    for column in required:
        if column not in row:
            raise ValueError(f"{fmt} rows need column {column!r}, which is not in the batch; columns are {sorted(row)}")
    reader = {"qa": _qa, "llava": _llava, "messages": _messages, "cauldron": _cauldron}[fmt]
    conv = reader(row, columns, images, name)
    conv.image_column = source or columns.image
    _check(conv, columns.turns(fmt) if fmt != "qa" else columns.answer, name)
    return conv


def _image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _text(value: Any, column: str, name: str, what: str = "text") -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{what} column {column!r}: {name}: expected a string, got {type(value).__name__} {_short(value)}"
        )
    return value


def _parts(text: str) -> list[dict[str, Any]]:
    """Text with ``<image>`` marks as content parts, in order."""
    parts: list[dict[str, Any]] = []
    pieces = _PLACEHOLDER.split(text)
    for index, piece in enumerate(pieces):
        if index:
            parts.append({"type": "image"})
        piece = piece.strip("\n") if index or len(pieces) > 1 else piece
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _prepend_images(messages: list[dict[str, Any]], count: int) -> None:
    """Put ``count`` image parts at the start of the first user turn (datasets that say
    nothing about where the images go mean: before the first question)."""
    for message in messages:
        if message["role"] == "user":
            message["content"][:0] = [{"type": "image"} for _ in range(count)]
            return


def _qa(row: dict[str, Any], columns: Columns, images: list[Any], name: str) -> Conversation:
    answer = row[columns.answer]
    if isinstance(answer, (list, tuple)) and answer and isinstance(answer[0], str):
        answer = answer[0]  # VQA-style lists of reference answers: train on the first
    question = _text(row[columns.question], columns.question, name, "question")
    answer = _text(answer, columns.answer, name, "answer")
    user = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    messages = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return Conversation(messages, images)


def _turn_list(
    row: dict[str, Any], columns: Columns, kind: str, keys: tuple[str, str], name: str, what: str, plural: str
) -> tuple[str, list]:
    """The turns of a conversation column, each checked to be a dict with ``keys``."""
    column = columns.turns(kind)
    turns = row[column]
    if not isinstance(turns, (list, tuple)):
        raise ValueError(f"column {column!r}: {name}: expected a list of {plural}, got {_short(turns)}")
    for turn in turns:
        if not isinstance(turn, dict) or any(k not in turn for k in keys):
            raise ValueError(
                f"column {column!r}: {name}: a {what} must be {{'{keys[0]}': ..., '{keys[1]}': ...}}, got {_short(turn)}"
            )
    return column, list(turns)


def _with_image_marks(messages: list[dict], images: list[Any]) -> Conversation:
    """The conversation, with image marks put before the first user text when the text had none."""
    marks = sum(p["type"] == "image" for m in messages for p in m["content"])
    if marks == 0 and images:
        _prepend_images(messages, len(images))
    return Conversation(messages, images)


def _llava(row: dict[str, Any], columns: Columns, images: list[Any], name: str) -> Conversation:
    column, turns = _turn_list(row, columns, "llava", ("from", "value"), name, "LLaVA turn", "turns")
    messages = []
    for turn in turns:
        role = _role(turn["from"], column, name)
        messages.append({"role": role, "content": _parts(_text(turn["value"], column, name))})
    return _with_image_marks(messages, images)


def _messages(row: dict[str, Any], columns: Columns, images: list[Any], name: str) -> Conversation:
    column, turns = _turn_list(row, columns, "messages", ("role", "content"), name, "message", "messages")
    messages, inline = [], []
    for turn in turns:
        role = _role(turn["role"], column, name)
        content = turn["content"]
        if isinstance(content, str):
            parts = _parts(content)
        elif isinstance(content, (list, tuple)):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": _text(part.get("text"), column, name)})
                elif kind == "image":
                    parts.append({"type": "image"})
                    value = next((part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)
                    if value is not None:
                        inline.append(value)
                else:
                    raise ValueError(
                        f"column {column!r}: {name}: a content part must be {{'type': 'text', "
                        f"'text': ...}} or {{'type': 'image'}}, got {_short(part)}"
                    )
        else:
            raise ValueError(
                f"column {column!r}: {name}: content must be a string or a list of parts, got {type(content).__name__}"
            )
        messages.append({"role": role, "content": parts})
    if inline:
        if images:
            raise ValueError(f"{name}: images both inline in {column!r} and in the images column; keep one")
        images = inline
    return _with_image_marks(messages, images)


def _cauldron(row: dict[str, Any], columns: Columns, images: list[Any], name: str) -> Conversation:
    column, turns = _turn_list(row, columns, "cauldron", ("user", "assistant"), name, "cauldron turn", "turns")
    messages = []
    for turn in turns:
        for role in ("user", "assistant"):
            text = _text(turn[role], column, name, f"{role} text")
            messages.append({"role": role, "content": [{"type": "text", "text": text}]})
    _prepend_images(messages, len(images))
    return Conversation(messages, images)


def _role(value: Any, column: str, name: str) -> str:
    role = _ROLES.get(value) if isinstance(value, str) else None
    if role is None:
        raise ValueError(f"column {column!r}: {name}: unknown role {value!r}; known: {sorted(_ROLES)}")
    return role


def _check(conv: Conversation, column: str, name: str) -> None:
    marks = 0
    for message in conv.messages:
        images = sum(p["type"] == "image" for p in message["content"])
        if images and message["role"] == "assistant":
            raise ValueError(
                f"column {column!r}: {name}: an assistant turn holds an image; images belong to user (or system) turns"
            )
        marks += images
    if marks != len(conv.images):
        raise ValueError(
            f"column {column!r}: {name}: {marks} image mark(s) but {len(conv.images)} image(s); "
            "each image needs one <image> mark (or none at all: the images then open the first "
            "user turn)"
        )
    if not any(m["role"] == "assistant" for m in conv.messages):
        raise ValueError(f"column {column!r}: {name}: no assistant turn, so nothing to learn")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
