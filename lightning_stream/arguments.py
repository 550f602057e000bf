"""``StreamingDataModule``'s arguments, checked at construction against one table.

Each argument has the types it accepts, the values among them it accepts, and both in words.
A wrong type is a ``TypeError``, a wrong value of the right type a ``ValueError``; either names
the argument, what it accepts and what it got, before any file is opened or worker started.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

__all__ = ["check_arguments"]

_ANY: Callable[[Any], bool] = lambda v: True  # noqa: E731


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _one_of(*choices: str) -> tuple[tuple[type, ...], Callable[[Any], bool], str]:
    return (str,), lambda v: v in choices, " or ".join(repr(c) for c in choices)


_INT, _REAL, _BOOL, _NONE = (numbers.Integral,), (numbers.Real,), (bool,), (type(None),)

# name: (accepted types, accepted values of those types, the two in words)
_ACCEPTS: dict[str, tuple[tuple[type, ...], Callable[[Any], bool], str]] = {
    "batch_size": (_INT, _at_least(1), "an int >= 1"),
    "val_batch_size": (_INT + _NONE, lambda v: v is None or v >= 1, "None (batch_size) or an int >= 1"),
    "num_workers": (_INT, _at_least(0), "an int >= 0"),
    "shuffle": (_BOOL, _ANY, "True or False"),
    "buffer_size": (_INT, _at_least(1), "an int >= 1"),
    "seed": (_INT, _at_least(0), "an int >= 0"),
    "drop_last": (_BOOL, _ANY, "True or False"),
    "pin_memory": (_BOOL + _NONE, _ANY, "None (when training on CUDA), True or False"),
    "persistent_workers": (_BOOL + _NONE, _ANY, "None (when num_workers > 0), True or False"),
    "prefetch_factor": (_INT + _NONE, lambda v: v is None or v >= 1, "None (torch's 2) or an int >= 1"),
    "on_error": _one_of("raise", "skip"),
    "max_skipped": (
        _REAL + _NONE,
        lambda v: v is None or v >= 0,
        "None (no limit), a count >= 1 or a fraction in [0, 1)",
    ),
    "strict_resume": (_BOOL, _ANY, "True or False"),
    "even": _one_of("drop", "pad"),
    "batch_format": _one_of("python", "numpy"),
    "lanes": (_INT + _NONE, lambda v: v is None or v >= 1, "None (world_size x num_workers) or an int >= 1"),
    "batch_tokens": (_INT + _NONE, lambda v: v is None or v >= 1, "None (fixed batches) or an int >= 1"),
    "length": ((str,) + _NONE, _ANY, "None, a column name or a function of a raw row"),
    "block_size": (_INT + _NONE, lambda v: v is None or v >= 1, "None (rows) or an int >= 1"),
    "tokens_column": ((str,), _ANY, "a column name"),
    "max_images": (_INT + _NONE, lambda v: v is None or v >= 0, "None (no limit) or an int >= 0"),
}

_CALLABLES = ("collate_fn", "eval_collate_fn", "prepare")


def check_arguments(**arguments: Any) -> None:
    """Raise on the first argument outside :data:`_ACCEPTS` (or not callable, for the functions).

    Example:
        >>> check_arguments(batch_size=32, on_error="skip")
        >>> check_arguments(batch_size="32")
        Traceback (most recent call last):
        TypeError: StreamingDataModule(batch_size='32'): batch_size must be an int >= 1, got a str
    """
    for name, value in arguments.items():
        if name == "length" and callable(value):
            continue  # a function of a raw row
        if name in _CALLABLES:
            if value is not None and not callable(value):
                raise TypeError(
                    f"StreamingDataModule({name}={value!r}): {name} must be None or a callable, got a {type(value).__name__}"
                )
            continue
        types, accepts, words = _ACCEPTS[name]
        # bool is an int to Python, but batch_size=True is a mistake, not a 1.
        typed = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not typed:
            got = "None" if value is None else f"a {type(value).__name__}"
            raise TypeError(f"StreamingDataModule({name}={value!r}): {name} must be {words}, got {got}")
        if not accepts(value):
            raise ValueError(f"StreamingDataModule({name}={value!r}): {name} must be {words}")
