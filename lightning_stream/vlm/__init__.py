"""Vision-language fine-tuning on streamed (image, question, answer) rows.

Public names (imported lazily, so a DataLoader worker that unpickles a transform does not
pay for importing Lightning and the model classes):

- :class:`VisionLanguageModel` -- LightningModule around any HF image-text-to-text model.
- :class:`VLMTransform` -- batched map from rows to ``input_ids``/``labels``/``pixel_values``.
- :class:`VLMCollator` -- dynamic padding into a batch of tensors.
- :class:`ShapesData`, :func:`make_shapes`, :func:`build_tiny_vlm` -- offline synthetic data
  and a tiny VLM that learns it on a CPU.
- :func:`load_image` -- any image value to RGB ``PIL.Image``.
- :func:`make_shape_chats` -- the shapes data as multi-turn, multi-image conversations.
- :func:`build_family` -- a tiny random-weight Qwen2/2.5/3-VL, Idefics3, SmolVLM, PaliGemma,
  LLaVA(-NeXT, -OneVision) or Gemma 3, config and processor, built offline.
- :func:`load_processor` -- ``AutoProcessor.from_pretrained`` that works without torchvision.

Example:
    >>> from lightning_stream.vlm import VLMTransform, VLMCollator
    >>> transform = VLMTransform(processor="data/shapes/model", max_length=128)
    >>> collate = VLMCollator(processor="data/shapes/model")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_stream.vlm.collate import VLMCollator
    from lightning_stream.vlm.data import ShapesData, build_tiny_vlm, make_shapes
    from lightning_stream.vlm.images import load_image
    from lightning_stream.vlm.module import VisionLanguageModel
    from lightning_stream.vlm.processor import load_processor
    from lightning_stream.vlm.shapes_chat import make_shape_chats
    from lightning_stream.vlm.transform import VLMTransform
    from lightning_stream.vlm.zoo import build_family

_EXPORTS = {
    "VisionLanguageModel": "module",
    "VLMTransform": "transform",
    "VLMCollator": "collate",
    "ShapesData": "data",
    "make_shapes": "shapes",
    "build_tiny_vlm": "tiny",
    "load_image": "images",
    "make_shape_chats": "shapes_chat",
    "build_family": "zoo",
    "load_processor": "processor",
}

__all__ = [
    "ShapesData",
    "VLMCollator",
    "VLMTransform",
    "VisionLanguageModel",
    "build_family",
    "build_tiny_vlm",
    "load_image",
    "load_processor",
    "make_shape_chats",
    "make_shapes",
]
assert sorted(_EXPORTS) == __all__  # one list of names, written twice only for linters


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
