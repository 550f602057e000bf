"""The few places where lightning_stream leans on another library's private parts, in one room.

Each function names what it reads and why no public API does the job. ``tests/test_compat.py``
pins every one of them, so a release of ``datasets``, ``transformers``, ``lightning`` or ``torch``
that moves one fails there, by name, rather than somewhere in a user's run. (``stores/objects.py``
keeps its own ``datasets`` privates, documented and pinned the same way in ``tests/test_objects.py``.)

The libraries are imported inside the functions: a store that reads parquet does not pay for
``transformers``, nor the CLI's ``--help`` for ``datasets``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

__all__ = [
    "arrow_table",
    "attached_trainer",
    "builder_extensions",
    "checkpoint_fit_loop",
    "datasets_streaming_retries",
    "fsdp_unwrapped",
    "gather_rows",
    "is_packaged_builder",
    "merge_images_in_embedding_dtype",
    "needs_decoding",
    "pil_image_processing_module",
    "pil_image_processor_class",
    "processor_class_for_config",
    "resolve_data_files",
    "select_table_columns",
]


# ---------------------------------------------------------------- datasets


def needs_decoding(feature: Any) -> bool:
    """Whether ``datasets`` decodes the values of a column of type ``feature`` (an ``Image``, an
    ``Audio``, or a list or struct holding one) rather than handing them over as stored.

    Private: ``datasets.features.features.require_decoding``, undocumented. Why: ``Features``
    only exposes the decoding itself (``decode_example``/``decode_column``), not which columns
    need it; this is the test ``datasets`` applies to each column, nested types included.
    """
    from datasets.features.features import require_decoding

    return bool(require_decoding(feature))


def gather_rows(table: Any, rows: Any) -> Any:
    """The ``rows`` (integer positions, any order, repeats allowed, at least one) of ``table``, a
    ``datasets.table.Table``, as a ``pyarrow.Table``.

    Private: ``datasets.table.Table.fast_gather``, left out of the documented members of the
    table classes. Why: it finds each row's record batch with one vectorised binary search over
    the memory-mapped batches and slices them, about 20x faster than ``Dataset.__getitem__``;
    no public method gathers rows of a ``datasets`` table without decoding or formatting them.
    """
    return table.fast_gather(rows)


def arrow_table(table: Any) -> Any:
    """The ``pyarrow.Table`` a ``datasets.table.Table`` wraps (memory-mapped for a file on disk).

    Private: the ``table`` attribute of ``datasets.table.Table``, undocumented. Why: zero-copy
    numpy views of its columns (``stores/columns.py``) need the arrow chunks themselves; the
    wrapper forwards most of ``pyarrow.Table``'s methods but is not one.
    """
    return table.table


def select_table_columns(table: Any, names: list[str]) -> Any:
    """``table`` (a ``datasets.table.Table``) with only the columns ``names``, still a
    ``datasets.table.Table``, so that :func:`gather_rows` works on it.

    Private: ``datasets.table.Table.select``, which each table class implements but the
    documented members of the table classes leave out. Why: ``pyarrow.Table.select`` on
    :func:`arrow_table` would return a plain arrow table, without the fast gather.
    """
    return table.select(names)


def resolve_data_files(pattern: str, base_path: str) -> list[str]:
    """The files ``pattern`` (a glob, local or ``fsspec`` URL) matches under ``base_path``, as
    ``datasets.load_dataset(data_files=...)`` would read them; ``FileNotFoundError`` if none.

    Private: ``datasets.data_files.resolve_pattern``, undocumented. Why: ``load_dataset`` lists
    the files of its ``data_files`` patterns with it and does not say which it found; resolving
    with the same function keeps a store's file list identical to what ``datasets`` reads for
    the same source (hidden files and ``__pycache__`` skipped unless named, ``**`` as it means it).
    """
    import datasets.data_files

    return datasets.data_files.resolve_pattern(pattern, base_path=base_path)


def builder_extensions() -> dict[str, list[str]]:
    """``datasets``' packaged builders (``parquet``, ``json``...) and the file extensions each reads.

    Private: ``datasets.packaged_modules._MODULE_TO_EXTENSIONS``. Why: no public API lists the
    extensions ``datasets`` infers a builder from; a folder with none of them is reported by
    name instead of with ``datasets``' own error about a builder the user never chose.
    """
    from datasets.packaged_modules import _MODULE_TO_EXTENSIONS

    return _MODULE_TO_EXTENSIONS


def is_packaged_builder(name: str) -> bool:
    """Whether ``datasets.load_dataset(name)`` means one of ``datasets``' own builders (``json``,
    ``parquet``, ``imagefolder``...) rather than a hub repository of that name.

    Private: ``datasets.packaged_modules._PACKAGED_DATASETS_MODULES``. Why: ``load_dataset``
    tries it before the hub, and no public API lists its keys; a hub probe for ``"parquet"``
    would ask the network about a dataset that is never read.
    """
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return name in _PACKAGED_DATASETS_MODULES


_STREAMING_RETRIES = ("STREAMING_READ_MAX_RETRIES", "STREAMING_OPEN_MAX_RETRIES")
_STREAMING_INTERVALS = ("STREAMING_READ_RETRY_INTERVAL", "STREAMING_OPEN_RETRY_INTERVAL")


@contextlib.contextmanager
def datasets_streaming_retries(retries: int, interval: float) -> Iterator[None]:
    """While open, ``datasets``' own retries of a stream's file opens and reads make ``retries``
    tries, ``interval`` seconds apart; then back to what they were. Process-wide: every stream
    read meanwhile, in any thread, gets them.

    Private: the module constants ``datasets.config.STREAMING_{READ,OPEN}_MAX_RETRIES`` and
    ``STREAMING_{READ,OPEN}_RETRY_INTERVAL`` (20 tries, 5 s apart by default), read by its
    streaming file objects at each retry. Why: ``load_dataset`` takes no retry settings, and
    20 tries of 5 s under our own retries would multiply the waits.
    """
    import datasets.config as config

    saved = {name: getattr(config, name) for name in _STREAMING_RETRIES + _STREAMING_INTERVALS}
    for name in _STREAMING_RETRIES:
        setattr(config, name, retries)
    for name in _STREAMING_INTERVALS:
        setattr(config, name, interval)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


# ---------------------------------------------------------------- lightning, torch


def checkpoint_fit_loop(checkpoint: dict[str, Any]) -> tuple[list, dict]:
    """The states of the train loaders in a Lightning ``checkpoint`` (those that have
    ``state_dict``, in order; ``[]`` if none) and its epoch loop's batch progress (``{}`` if none).

    Private: the layout of Lightning's loop state in a checkpoint,
    ``loops.fit_loop.state_dict.combined_loader`` and ``loops.fit_loop["epoch_loop.batch_progress"]``
    (``{"current": {"processed": ...}, "is_last_batch": ...}``). Why: Lightning hands a loader
    its state back only when the loader is made after the loops are restored, and no public
    API gives a callback the loader state or the position of the checkpoint being loaded.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    states = fit.get("state_dict", {}).get("combined_loader") or []
    return states, fit.get("epoch_loop.batch_progress", {})


def attached_trainer(module: Any) -> Any:
    """The ``Trainer`` a ``LightningModule`` is attached to, or ``None``.

    Private: ``LightningModule._trainer``. Why: the public ``trainer`` property raises a
    ``RuntimeError`` when the module is not attached (a step called by hand, in a notebook or a
    test), and there is no public way to ask first.
    """
    return module._trainer


def fsdp_unwrapped(model: Any) -> Any:
    """The module an FSDP (``FullyShardedDataParallel``) wrapper holds; ``model`` itself if it is
    not one.

    Private: ``FullyShardedDataParallel._fsdp_wrapped_module``. Why: the wrapper's ``forward``
    takes ``(*args, **kwargs)``, hiding the signature of the model's; its public ``module``
    property is the same module (unwrapping activation checkpointing too), but asking it of any
    model would find an unrelated submodule called ``module``.
    """
    return getattr(model, "_fsdp_wrapped_module", model)


# ---------------------------------------------------------------- transformers


def processor_class_for_config(config: Any) -> type | None:
    """The processor class ``AutoProcessor`` maps the model config ``config`` to, or ``None``.

    Private: ``transformers.models.auto.processing_auto.PROCESSOR_MAPPING``, undocumented. Why:
    ``AutoProcessor.from_pretrained`` resolves the class and builds it at once; the class is
    wanted before that, to build it without its video processor (which needs torchvision).
    """
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    return PROCESSOR_MAPPING.get(type(config), None)


def pil_image_processing_module(module: str) -> ModuleType:
    """The module ``transformers.models.<module>.image_processing_pil_<module>`` (``module`` as
    in ``transformers.models``: ``siglip``, ``qwen2_vl``); ``ImportError`` where this release has
    none (transformers 4).

    Private: the module path of transformers 5's PIL-backend image processors. Why: their
    top-level names (``transformers.SiglipImageProcessorPil``) are placeholders that raise where
    torchvision is missing, in some 5.x releases; the module itself imports without torchvision.
    """
    return importlib.import_module(f"transformers.models.{module}.image_processing_pil_{module}")


def pil_image_processor_class(name: str) -> type | None:
    """The PIL-backend class of the image processor ``name`` (``Idefics3ImageProcessor``,
    ``...Fast`` or ``...Pil``), or ``None`` where this transformers has none.

    Private: the model-type mapping of ``transformers.models.auto.image_processing_auto`` and
    the module path of :func:`pil_image_processing_module`. Why: where torchvision is missing,
    transformers 5.5-5.24 resolve a checkpoint that names the torchvision class (every
    SmolVLM/Idefics3 checkpoint) to a placeholder that raises, and their top-level
    ``transformers.<Name>Pil`` is such a placeholder too; the module itself imports without
    torchvision.
    """
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    base = name.removesuffix("Fast").removesuffix("Pil")
    wanted = f"{base}Pil"
    for model_type, names in IMAGE_PROCESSOR_MAPPING_NAMES.items():
        if not isinstance(names, dict) or names.get("pil") != wanted:
            continue
        try:
            found = pil_image_processing_module(model_type_to_module_name(model_type))
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
