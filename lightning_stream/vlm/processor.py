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

from .errors import ProcessorLoadError

log = logging.getLogger(__name__)

__all__ = ["LazyProcessor", "ProcessorLoadError", "build_messages", "load_processor", "render_prompt", "without_video"]


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

    def load(self) -> Any:
        """The processor, loaded now if it was not yet."""
        return self.processor

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
    processor is built without it (images and text work; videos raise) and its image
    processor is the PIL one, loaded here where the installed transformers cannot pick it
    itself (SmolVLM/Idefics3 checkpoints name the torchvision class). A torchvision that is
    installed but does not import (a CUDA build next to a CPU torch) is reported, not
    silently worked around. Any failure is a :class:`ProcessorLoadError` naming the path,
    the class and the fix.

    Example:
        >>> load_processor("HuggingFaceTB/SmolVLM-256M-Instruct")  # doctest: +SKIP
    """
    from transformers import AutoProcessor

    cls: type | None = None
    try:
        if _torchvision_imports():
            try:
                return AutoProcessor.from_pretrained(name_or_path, **kwargs)
            except OSError as err:
                # A processor saved without its video processor (as build_family and any
                # torchvision-less machine save them) does not load back where torchvision is.
                cls = _processor_class(name_or_path, kwargs)
                if "video" not in str(err).lower() or cls is None or "video_processor" not in cls.get_attributes():
                    raise
                log.info("%s has no video processor saved: loading %s without one", name_or_path, cls.__name__)
                return without_video(cls).from_pretrained(name_or_path, **kwargs)
        cls = _processor_class(name_or_path, kwargs)
        if cls is None or not {"image_processor", "video_processor"} & set(cls.get_attributes()):
            return AutoProcessor.from_pretrained(name_or_path, **kwargs)
        log.info("torchvision not installed: loading %s with PIL image processing, without video", cls.__name__)
        try:
            return without_video(cls).from_pretrained(name_or_path, **kwargs)
        except Exception as err:
            # transformers 5.5-5.24 cannot resolve a saved torchvision image processor class
            # (every SmolVLM checkpoint names one) to its PIL twin: we do it ourselves.
            if "torchvision" not in str(err).lower() and "image processor" not in str(err).lower():
                raise
            image = _pil_image_processor(name_or_path, kwargs)
            if image is None:
                raise
            return _assemble(cls, name_or_path, image, kwargs)
    except ProcessorLoadError:
        raise
    except Exception as err:
        if cls is None:
            try:  # name the class in the message where the folder says which it is
                cls = _processor_class(name_or_path, kwargs)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                cls = None
        raise ProcessorLoadError.of(name_or_path, cls, err) from err


def without_video(cls: type) -> type:
    """``cls`` (a processor class) minus its video processor, under the same name.

    The processor's own ``__init__`` runs unchanged; it just never receives a video
    processor, so nothing that needs torchvision is built, and it saves like ``cls``.

    Example:
        >>> from transformers import Qwen2VLProcessor
        >>> without_video(Qwen2VLProcessor).get_attributes()
        ['image_processor', 'tokenizer']
    """
    given: dict[str, Any] = {"video_processor": None}
    attributes = [a for a in cls.get_attributes() if a not in given]

    def _given(processor_dict: dict[str, Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        # A saved video processor config is not ours to build; some processors make the
        # argument required, so it is passed, as None.
        return {k: v for k, v in processor_dict.items() if k not in given}, {**kwargs, **given}

    class Processor(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(klass) -> list[str]:
            return list(attributes)

        # transformers 5.5-5.24 build the processor in ``from_args_and_dict`` from the loaded
        # attributes, positionally; 5.25 in ``from_dict``. Both are covered; the loaded
        # attributes go by name, so that a dropped one cannot shift the others.
        @classmethod
        def from_args_and_dict(klass, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            processor_dict, kwargs = _given(processor_dict, {**kwargs, **dict(zip(attributes, args))})
            return super().from_args_and_dict((), processor_dict, **kwargs)

        @classmethod
        def from_dict(klass, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            processor_dict, kwargs = _given(processor_dict, kwargs)
            return super().from_dict(processor_dict, **kwargs)

    Processor.__name__ = Processor.__qualname__ = cls.__name__
    Processor.__module__ = cls.__module__
    Processor.__doc__ = cls.__doc__
    return Processor


def _assemble(cls: type, name_or_path: str, image_processor: Any, kwargs: dict[str, Any]) -> Any:
    """The processor ``cls`` saved at ``name_or_path``, built around ``image_processor``."""
    from transformers import AutoTokenizer

    hub_kwargs = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    processor_dict, _ = cls.get_processor_dict(name_or_path, **hub_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
    extra = {k: v for k, v in kwargs.items() if k not in _HUB_KWARGS}
    return without_video(cls).from_args_and_dict(
        (), processor_dict, image_processor=image_processor, tokenizer=tokenizer, **extra
    )


def _pil_image_processor(name_or_path: str, kwargs: dict[str, Any]) -> Any:
    """The saved image processor, as its PIL class; ``None`` where the folder names no class."""
    from transformers.image_processing_utils import ImageProcessingMixin

    from .._compat import pil_image_processor_class

    hub_kwargs = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        return None
    name = config.get("image_processor_type")
    if not name:
        return None
    pil = pil_image_processor_class(name)
    if pil is None:
        raise ImportError(f"{name} has no PIL image processor in this transformers release", name="torchvision")
    extra = {k: v for k, v in kwargs.items() if k not in _HUB_KWARGS}
    return pil.from_pretrained(name_or_path, **hub_kwargs, **extra)


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
    from transformers.processing_utils import ProcessorMixin

    from .._compat import processor_class_for_config

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
    return processor_class_for_config(config)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code")


def build_messages(question: str, answer: str | None = None, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for one image and one question, optionally with the answer turn.

    Example:
        >>> build_messages("What color?", "red")[1]
        {'role': 'assistant', 'content': [{'type': 'text', 'text': 'red'}]}
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(processor: Any, question: str, answer: str | None = None, system_prompt: str | None = None) -> str:
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
