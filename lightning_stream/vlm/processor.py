"""A Hugging Face processor that is loaded on first use and never pickled.

Transforms and collators run inside DataLoader worker processes. They are pickled to get
there, so they must hold only the processor's *name* until a worker first needs it; a loaded
processor (tokenizer, image processor) is large and not always picklable.

Example:
    >>> lazy = LazyProcessor("data/shapes/model")
    >>> lazy.loaded
    False
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LazyProcessor", "render_prompt", "build_messages"]


class LazyProcessor:
    """Holds an ``AutoProcessor`` path and loads it on first access of :attr:`processor`.

    Args:
        name_or_path: a local directory with processor files or a hub id.
        kwargs: extra keyword arguments for ``AutoProcessor.from_pretrained``.

    Example:
        >>> lazy = LazyProcessor("HuggingFaceTB/SmolVLM-256M-Instruct", {"do_image_splitting": False})
        >>> import pickle; pickle.loads(pickle.dumps(lazy)).loaded
        False
    """

    def __init__(self, name_or_path: str, kwargs: dict[str, Any] | None = None) -> None:
        self.name_or_path = name_or_path
        self.kwargs = dict(kwargs or {})
        self._processor: Any = None

    @property
    def loaded(self) -> bool:
        return self._processor is not None

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            log.debug("loading processor %s", self.name_or_path)
            self._processor = AutoProcessor.from_pretrained(self.name_or_path, **self.kwargs)
        return self._processor

    @property
    def tokenizer(self) -> Any:
        proc = self.processor
        return getattr(proc, "tokenizer", proc)

    def __getstate__(self) -> dict[str, Any]:
        # Ship the name, not the loaded object: each worker loads its own copy.
        return {"name_or_path": self.name_or_path, "kwargs": self.kwargs, "_processor": None}

    def __repr__(self) -> str:
        return f"LazyProcessor({self.name_or_path!r})"


def build_messages(
    question: str, answer: str | None = None, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for one image and one question, optionally with the answer turn.

    Example:
        >>> build_messages("What color?", "red")[1]
        {'role': 'assistant', 'content': [{'type': 'text', 'text': 'red'}]}
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append(
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    )
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(
    processor: Any, question: str, answer: str | None = None, system_prompt: str | None = None
) -> str:
    """Render the chat template to text; without ``answer`` it ends with the generation prompt.

    Example:
        >>> render_prompt(processor, "What shape is it?")  # doctest: +SKIP
        '<s><|user|>\\n<image>What shape is it?<|end|>\\n<|assistant|>\\n'
    """
    return processor.apply_chat_template(
        build_messages(question, answer, system_prompt),
        add_generation_prompt=answer is None,
        tokenize=False,
    )
