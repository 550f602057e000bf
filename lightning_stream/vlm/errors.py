"""What cannot be loaded, said as that: a processor or a model, never a data row.

Both name the path or hub id, the class, what went wrong and the fix (a missing package, a
wrong path, an unsupported transformers release).
"""

from __future__ import annotations

from ..transforms import TransformError

__all__ = ["ModelLoadError", "ProcessorLoadError"]


def _fix(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".lower()
    missing = err.name if isinstance(err, ImportError) else None
    if missing or "torchvision" in text or "requires the" in text:
        return (
            f"install {missing or 'torchvision'} (examples/vlm/README.md names the build that matches your torch), "
            "or use a transformers release of the tested window (README)"
        )
    if isinstance(err, OSError):
        return "check the path or hub id (and HF_HUB_OFFLINE, or your token, for a hub id)"
    return "check that the folder was saved by save_pretrained and that transformers is in the tested window (README)"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:2000]}"


class ProcessorLoadError(TransformError):
    """A processor (tokenizer, image or video processor) that cannot be loaded.

    It is the processor's fault, never a data row's: as a
    :class:`~lightning_stream.TransformError` it is raised at once, never skipped.
    """

    @classmethod
    def of(cls, name_or_path: str, processor_cls: type | None, err: BaseException) -> ProcessorLoadError:
        what = f" ({processor_cls.__name__})" if processor_cls is not None else ""
        return cls(f"cannot load the processor {name_or_path!r}{what}: {_describe(err)}. Fix: {_fix(err)}")


class ModelLoadError(RuntimeError):
    """A model that cannot be built or loaded from its path or hub id."""

    @classmethod
    def of(cls, name_or_path: str, err: BaseException) -> ModelLoadError:
        return cls(
            f"cannot load the model {name_or_path!r} (AutoModelForImageTextToText): {_describe(err)}. Fix: {_fix(err)}"
        )
