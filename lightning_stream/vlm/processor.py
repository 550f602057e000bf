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

__all__ = ["LazyProcessor", "load_processor", "without_video", "render_prompt", "build_messages"]


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
            log.debug("loading processor %s", self.name_or_path)
            self._processor = load_processor(self.name_or_path, **self.kwargs)
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


def load_processor(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, that also works where torchvision is missing.

    Qwen-VL, SmolVLM and LLaVA-OneVision processors carry a video processor, and every
    video processor needs torchvision, even to train on images. Without torchvision the
    processor is built without it (images and text work; videos raise) and image
    processors take their PIL backend. A torchvision that is installed but does not import
    (a CUDA build next to a CPU torch) is reported, not silently worked around.

    Example:
        >>> load_processor("HuggingFaceTB/SmolVLM-256M-Instruct")  # doctest: +SKIP
    """
    from transformers import AutoProcessor

    if _torchvision_imports():
        return AutoProcessor.from_pretrained(name_or_path, **kwargs)
    cls = _processor_class(name_or_path, kwargs)
    if cls is None or "video_processor" not in cls.get_attributes():
        return AutoProcessor.from_pretrained(name_or_path, **kwargs)
    log.info("torchvision not installed: loading %s without its video processor", cls.__name__)
    return without_video(cls).from_pretrained(name_or_path, **kwargs)


def without_video(cls: type) -> type:
    """``cls`` (a processor class) minus its video processor, under the same name.

    The processor's own ``__init__`` runs unchanged; it just never receives a video
    processor, so nothing that needs torchvision is built, and it saves like ``cls``.

    Example:
        >>> from transformers import Qwen2VLProcessor
        >>> without_video(Qwen2VLProcessor).get_attributes()
        ['image_processor', 'tokenizer']
    """

    attributes = [a for a in cls.get_attributes() if a != "video_processor"]

    class Processor(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(klass) -> list[str]:
            return list(attributes)

        @classmethod
        def from_args_and_dict(klass, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            # A saved video processor config is not ours to build; some processors make
            # the argument required, so it is passed, as None.
            processor_dict = {k: v for k, v in processor_dict.items() if k != "video_processor"}
            kwargs["video_processor"] = None
            return super().from_args_and_dict(args, processor_dict, **kwargs)

    Processor.__name__ = Processor.__qualname__ = cls.__name__
    Processor.__module__ = cls.__module__
    Processor.__doc__ = cls.__doc__
    return Processor


def _torchvision_imports() -> bool:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # the index's CUDA wheel beside a +cpu torch: RuntimeError
        import torch

        raise ImportError(
            f"torchvision is installed but does not import next to torch {torch.__version__} "
            f"({type(err).__name__}: {err}). lightning_stream.vlm does not need it: "
            "`pip uninstall torchvision`, or install the build that matches your torch "
            "(CPU: `pip install torchvision --index-url https://download.pytorch.org/whl/cpu`); "
            "see examples/vlm/README.md"
        ) from err
    return True


def _processor_class(name_or_path: str, kwargs: dict[str, Any]) -> type | None:
    """The processor class a checkpoint names, or its model type maps to; ``None`` if neither."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.processing_utils import ProcessorMixin

    hub_kwargs = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    try:
        processor_dict, _ = ProcessorMixin.get_processor_dict(name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        processor_dict = {}
    name = processor_dict.get("processor_class")
    if name and hasattr(transformers, name):
        return getattr(transformers, name)
    try:
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        return None
    return PROCESSOR_MAPPING.get(type(config), None)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code")


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
