"""The few places where lightning_stream leans on another library's private parts, in one room.

Each function names what it reads and why no public API does the job. ``tests/test_compat.py``
pins every one of them, so a release of ``transformers`` or ``lightning`` that moves one fails
there, by name, rather than somewhere in a user's run. (``stores/objects.py`` keeps its own
``datasets`` privates, documented and pinned the same way in ``tests/test_objects.py``.)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["merge_images_in_embedding_dtype", "pil_image_processor_class"]


def pil_image_processor_class(name: str) -> type | None:
    """The PIL-backend class of the image processor ``name`` (``Idefics3ImageProcessor``,
    ``...Fast`` or ``...Pil``), or ``None`` where this transformers has none.

    Private: the model-type mapping of ``transformers.models.auto.image_processing_auto`` and
    the module path ``transformers.models.<type>.image_processing_pil_<type>``. Why: where
    torchvision is missing, transformers 5.5-5.24 resolve a checkpoint that names the
    torchvision class (every SmolVLM/Idefics3 checkpoint) to a placeholder that raises, and
    their top-level ``transformers.<Name>Pil`` is such a placeholder too; the module itself
    imports without torchvision.
    """
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    base = name.removesuffix("Fast").removesuffix("Pil")
    wanted = f"{base}Pil"
    for model_type, names in IMAGE_PROCESSOR_MAPPING_NAMES.items():
        if not isinstance(names, dict) or names.get("pil") != wanted:
            continue
        module = model_type_to_module_name(model_type)
        try:
            found = importlib.import_module(f"transformers.models.{module}.image_processing_pil_{module}")
        except ImportError:
            continue
        cls = getattr(found, wanted, None)
        if isinstance(cls, type):
            return cls
    return None


def merge_images_in_embedding_dtype(model: Any) -> int:
    """Make every ``inputs_merger`` of ``model`` cast image features to the text embeddings' dtype.

    Private: the ``inputs_merger(input_ids, inputs_embeds, image_hidden_states)`` method of
    SmolVLM's model (transformers 5.5-5.17 at least). Why: under autocast (``bf16-mixed``, on
    CUDA and on CPU) the connector's linear layer returns bfloat16 while the embeddings stay
    float32, and those releases write one into the other with an index put that refuses mixed
    dtypes ("Index put requires the source and destination dtypes match"). Idefics3's merger
    and later SmolVLM releases cast first; this gives the same cast to the ones that do not.
    Returns how many mergers were wrapped.
    """
    import inspect

    wrapped = 0
    for module in model.modules():
        merger = getattr(type(module), "inputs_merger", None)
        if merger is None or getattr(module, "_lightning_stream_cast", False):
            continue
        names = list(inspect.signature(merger).parameters)[1:]
        if names[:3] != ["input_ids", "inputs_embeds", "image_hidden_states"]:
            continue
        bound = module.inputs_merger

        def cast_first(*args: Any, _bound: Any = bound, _names: list[str] = names, **kwargs: Any) -> Any:
            values = dict(zip(_names, args), **kwargs)
            embeds, images = values.get("inputs_embeds"), values.get("image_hidden_states")
            if embeds is not None and images is not None and images.dtype != embeds.dtype:
                values["image_hidden_states"] = images.to(embeds.dtype)
            return _bound(**values)

        module.inputs_merger = cast_first
        module._lightning_stream_cast = True
        wrapped += 1
    return wrapped
