"""``StreamingDataModule``'s options: three frozen groups, each option declared once, with its check.

Each field carries the types it accepts, the values among them it accepts, and both in words
(:func:`option`); a group validates itself when it is made, so a wrong type is a ``TypeError``
and a wrong value of the right type a ``ValueError`` that names the argument, what it accepts and
what it got, before any file is opened or worker started. The datamodule's signature lists the
arguments (as LightningCLI and users see them); the groups are built from it by name, and every
value derived from them (evaluation batch size, persistent workers, readers, cache budgets) is
computed here.

- :class:`ReadOptions`: what the steps hold and in what order (batches, shuffle, token budgets);
- :class:`LoaderOptions`: the worker processes;
- :class:`ErrorOptions`: bad rows and checkpoints that do not fit.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

__all__ = ["ErrorOptions", "LoaderOptions", "ReadOptions", "check_callables", "option"]

_INT, _REAL, _BOOL, _NONE, _STR = (numbers.Integral,), (numbers.Real,), (bool,), (type(None),), (str,)
_ANY: Callable[[Any], bool] = lambda v: True  # noqa: E731


def _at_least(low: float, or_none: bool = False) -> Callable[[Any], bool]:
    return lambda v: (or_none and v is None) or (v is not None and v >= low)


def option(default: Any, types: tuple[type, ...], accepts: Callable[[Any], bool], words: str) -> Any:
    """A field with its check: the ``types`` it takes, which of their values it ``accepts``, both in ``words``."""
    return dataclasses.field(default=default, metadata={"types": types, "accepts": accepts, "words": words})


def _one_of(default: str, *choices: str) -> Any:
    return option(default, _STR, lambda v: v in choices, " or ".join(repr(c) for c in choices))


class _Group:
    """Validation and construction by name, shared by the groups."""

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> Any:
        """The group from the datamodule's arguments (the names its fields have)."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls) if f.name in arguments})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("callable_ok") and callable(value):
                continue
            types, accepts, words = f.metadata["types"], f.metadata["accepts"], f.metadata["words"]
            # bool is an int to Python, but batch_size=True is a mistake, not a 1.
            typed = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            if not typed:
                got = "None" if value is None else f"a {type(value).__name__}"
                raise TypeError(f"StreamingDataModule({f.name}={value!r}): {f.name} must be {words}, got {got}")
            if not accepts(value):
                raise ValueError(f"StreamingDataModule({f.name}={value!r}): {f.name} must be {words}")


def _length() -> Any:
    field = option(None, _STR + _NONE, _ANY, "None, a column name or a function of a raw row")
    return dataclasses.field(default=None, metadata={**field.metadata, "callable_ok": True})


@dataclasses.dataclass(frozen=True)
class ReadOptions(_Group):
    """What each step holds and in what order."""

    batch_size: int = option(32, _INT, _at_least(1), "an int >= 1")
    val_batch_size: int | None = option(None, _INT + _NONE, _at_least(1, True), "None (batch_size) or an int >= 1")
    shuffle: bool = option(True, _BOOL, _ANY, "True or False")
    buffer_size: int = option(10_000, _INT, _at_least(1), "an int >= 1")
    seed: int = option(0, _INT, _at_least(0), "an int >= 0")
    drop_last: bool = option(False, _BOOL, _ANY, "True or False")
    even: str = _one_of("drop", "drop", "pad")
    batch_format: str = _one_of("python", "python", "numpy")
    lanes: int | None = option(None, _INT + _NONE, _at_least(1, True), "None (world_size x num_workers) or an int >= 1")
    batch_tokens: int | None = option(None, _INT + _NONE, _at_least(1, True), "None (fixed batches) or an int >= 1")
    length: Any = _length()
    max_images: int | None = option(None, _INT + _NONE, _at_least(0, True), "None (no limit) or an int >= 0")
    block_size: int | None = option(None, _INT + _NONE, _at_least(1, True), "None (rows) or an int >= 1")
    tokens_column: str = option("input_ids", _STR, _ANY, "a column name")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_tokens is not None and self.block_size is not None:
            raise ValueError(
                "StreamingDataModule(batch_tokens=..., block_size=...): choose one: steps of whole rows within a token "
                "budget (batch_tokens), or fixed blocks cut from the concatenated rows (block_size)"
            )
        if (self.length is not None) != (self.batch_tokens is not None or self.block_size is not None):
            raise ValueError(
                f"StreamingDataModule(batch_tokens={self.batch_tokens!r}, block_size={self.block_size!r}, "
                f"length={self.length!r}): token-budget steps and token blocks need length, where each row's tokens "
                "come from (a column or a function of a raw row), and length needs one of them"
            )
        if self.max_images is not None and self.batch_tokens is None:
            raise ValueError(
                f"StreamingDataModule(max_images={self.max_images}): the image budget needs batch_tokens and length"
            )

    @property
    def eval_batch_size(self) -> int:
        return self.val_batch_size or self.batch_size

    def windows_per_reader(self, readers: int) -> int:
        """Shuffle windows each reader holds: one per lane it reads."""
        return -(-(self.lanes or readers) // readers)


@dataclasses.dataclass(frozen=True)
class LoaderOptions(_Group):
    """The DataLoader's worker processes."""

    num_workers: int = option(0, _INT, _at_least(0), "an int >= 0")
    pin_memory: bool | None = option(None, _BOOL + _NONE, _ANY, "None (when training on CUDA), True or False")
    persistent_workers: bool | None = option(None, _BOOL + _NONE, _ANY, "None (when num_workers > 0), True or False")
    prefetch_factor: int | None = option(None, _INT + _NONE, _at_least(1, True), "None (torch's 2) or an int >= 1")

    @property
    def persistent(self) -> bool:
        return self.num_workers > 0 if self.persistent_workers is None else self.persistent_workers

    def readers(self, world_size: int) -> int:
        """Processes that read a loader's data over all ranks: ``world_size x num_workers``."""
        return world_size * max(1, self.num_workers)


@dataclasses.dataclass(frozen=True)
class ErrorOptions(_Group):
    """Bad rows, and checkpoints that do not fit the data."""

    on_error: str = _one_of("raise", "raise", "skip")
    max_skipped: float | None = option(
        None, _REAL + _NONE, _at_least(0, True), "None (no limit), a count >= 1 or a fraction in [0, 1)"
    )
    strict_resume: bool = option(True, _BOOL, _ANY, "True or False")


def check_callables(**functions: Any) -> None:
    """Each of ``functions`` is None or callable (``collate_fn``, ``eval_collate_fn``, ``prepare``).

    Example:
        >>> check_callables(collate_fn=3)
        Traceback (most recent call last):
        TypeError: StreamingDataModule(collate_fn=3): collate_fn must be None or a callable, got a int
    """
    for name, value in functions.items():
        if value is not None and not callable(value):
            raise TypeError(
                f"StreamingDataModule({name}={value!r}): {name} must be None or a callable, got a {type(value).__name__}"
            )
