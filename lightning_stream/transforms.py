"""Lazy preprocessing with ``datasets``' ``map``/``filter`` semantics, run inside the workers.

A pipeline is a list of :class:`Map` and :class:`Filter` steps applied to a batch given as
``dict[str, list]`` (decoded values, as ``Dataset.map(batched=True)`` passes them). Nothing is
cached: the output lives until the batch is collated.

A plain callable is a batched :class:`Map`. A function may be given by import path
(``"mypkg.prep.tokenize"``), which is how YAML configs name it.

Two kinds of failure are told apart. A function that *raises* may have met a bad row: the
dataset re-runs the batch row by row to name that row (``on_error`` decides whether it stops or
skips it). A function whose *output* is malformed (not a mapping; ``None``; a column that is not
one value per row; flags of the wrong count) or that reads a column the batch does not have is
broken whatever the rows: that is a :class:`TransformError` naming the function, raised at
once, never re-run row by row and never skipped. Unlike ``Dataset.map``, where ``None`` means
"side effects only", a step exists for its output, so ``None`` is such an error (a forgotten
``return``).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rng import current_rng

__all__ = [
    "Filter",
    "Map",
    "Pipeline",
    "TransformError",
    "as_pipeline",
    "describe_callable",
    "num_rows",
    "preflight",
    "resolve_callable",
]

Batch = dict[str, list]


class TransformError(ValueError):
    """A transform or filter is broken whatever the rows (its output, or a column it reads): the message names it."""


def resolve_callable(fn: Callable | str) -> Callable:
    """Return ``fn``, importing it first when given as ``"module.attr"``."""
    if callable(fn):
        return fn
    if isinstance(fn, str) and "." in fn:
        module, _, attr = fn.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ImportError(f"cannot import transform function {fn!r}: {err}") from err
    raise TypeError(f"expected a callable or an import path 'module.function', got {fn!r}")


def describe_callable(fn: Any) -> str:
    """``module.qualname (file.py:line)``: how an error names user code, lambdas included.

    Example:
        >>> describe_callable(len)
        'builtins.len'
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    code = getattr(fn, "__code__", None) or getattr(getattr(type(fn), "__call__", None), "__code__", None)  # noqa: B004
    where = f" ({os.path.basename(code.co_filename)}:{code.co_firstlineno})" if code is not None else ""
    return f"{module}.{qualname}{where}"


class _MissingColumn(KeyError):
    """A column the function asked for and the batch has not (a ``KeyError``, so user code may catch it)."""


class _Columns(dict):
    """The batch (or row) as the function sees it: reading an absent column raises ``_MissingColumn``."""

    def __missing__(self, key: Any) -> Any:
        raise _MissingColumn(key)


def num_rows(batch: Batch) -> int:
    """How many rows a column batch holds (0 for no column)."""
    return len(next(iter(batch.values()))) if batch else 0


def _rows(batch: Batch) -> list[dict]:
    keys = list(batch)
    return [_Columns(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def _call(fn: Callable, arg: dict, fn_kwargs: dict, what: str) -> Any:
    try:
        return fn(arg if isinstance(arg, _Columns) else _Columns(arg), **fn_kwargs)
    except _MissingColumn as err:
        raise TransformError(
            f"{what} reads column {err.args[0]!r}, which the batch does not have (columns: {list(arg)}); "
            "read one of those, or add the column in an earlier step"
        ) from err


def _length(value: Any) -> int | None:
    """The number of rows of a returned column, or None when it is not one value per row."""
    if isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        return len(value)
    except TypeError:  # a scalar, a 0-d array
        return None


def _no_return(what: str, returns: str) -> TransformError:
    return TransformError(f"{what} returned None; it must return {returns}: is its `return` missing?")


@dataclass
class Map:
    """``Dataset.map`` for one step of the pipeline.

    Args:
        function: ``fn(batch: dict[str, list], **fn_kwargs) -> Mapping[str, list]`` when
            ``batched``, else ``fn(row: dict, **fn_kwargs) -> Mapping``; or its import path. Any
            mapping may be returned (``dict``, ``transformers.BatchEncoding``, ``UserDict``).
        batched: whether ``function`` takes a batch.
        fn_kwargs: extra keyword arguments for ``function``.
        remove_columns: input columns to drop before the output is merged in.
        with_rng: pass ``rng=``, the batch's ``numpy.random.Generator``, seeded from
            ``(seed, epoch, the batch's place in the epoch)``: draws are the same after a resume
            and with any ``num_workers`` (``rng.py``).

    Example:
        >>> Map(lambda b: {"n": [len(t) for t in b["text"]]})({"text": ["ab", "c"]})
        {'text': ['ab', 'c'], 'n': [2, 1]}
    """

    function: Callable | str
    batched: bool = True
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    remove_columns: list[str] | None = None
    with_rng: bool = False

    def __post_init__(self) -> None:
        resolve_callable(self.function)  # a wrong function or import path fails here, not in a worker

    def __call__(self, batch: Batch) -> Batch:
        fn = resolve_callable(self.function)
        what = f"transform {describe_callable(fn)}"
        kwargs = {**self.fn_kwargs, "rng": current_rng()} if self.with_rng else self.fn_kwargs
        if self.batched:
            out = self._columns(_call(fn, batch, kwargs, what), what)
        else:
            out = self._rows_to_columns([_call(fn, row, kwargs, what) for row in _rows(batch)], what)
        drop = set(self.remove_columns or ())
        missing = drop - set(batch)
        if missing:
            raise TransformError(f"{what}: remove_columns {sorted(missing)} not in the batch (columns: {list(batch)})")
        merged = {k: v for k, v in batch.items() if k not in drop}
        merged.update(out)
        if not merged:
            raise TransformError(
                f"{what} left the batch with no column: it returned none and remove_columns removed all"
            )
        lengths = {k: _length(v) for k, v in merged.items()}
        if len(set(lengths.values())) > 1:
            raise TransformError(
                f"{what} returned columns of unequal length {lengths} for a batch of {num_rows(batch)} rows; return one "
                "value per row, or, to change the number of rows, remove the input columns with remove_columns"
            )
        return merged

    def _columns(self, out: Any, what: str) -> Batch:
        """A batched function's output as columns, or the error that says how it is malformed."""
        if out is None:
            raise _no_return(what, "a mapping of columns (dict, BatchEncoding, ...)")
        if not isinstance(out, Mapping):
            raise TransformError(
                f"{what} must return a mapping of columns (dict, BatchEncoding, ...), got {type(out).__name__}"
            )
        for name, value in out.items():
            if _length(value) is None:
                raise TransformError(
                    f"{what} returned column {name!r} as one {type(value).__name__}, not one value per row: "
                    "return a list with a value for each row of the batch, or pass batched=False to map row by row"
                )
        return dict(out)

    def _rows_to_columns(self, outs: list[Any], what: str) -> Batch:
        """A row function's outputs (one mapping per row) as columns."""
        for out in outs:
            if out is None:
                raise _no_return(what, "a mapping of the row's new values (batched=False)")
            if not isinstance(out, Mapping):
                raise TransformError(
                    f"{what} must return a mapping of the row's values (batched=False), got {type(out).__name__}"
                )
        keys = list(outs[0]) if outs else []
        odd = next((out for out in outs if out.keys() != outs[0].keys()), None)
        if odd is not None:
            raise TransformError(
                f"{what} returned other columns for other rows ({keys} and {list(odd)}); return the same columns for every row"
            )
        return {k: [out[k] for out in outs] for k in keys}


@dataclass
class Filter:
    """``Dataset.filter`` for one step of the pipeline.

    Rows it rejects are removed from the batch they are in: the batch gets smaller, so the number
    of steps per epoch (and every rank's step count) stays fixed and known.

    Example:
        >>> Filter(lambda b: [t != "" for t in b["text"]])({"text": ["a", ""]})
        {'text': ['a']}
    """

    function: Callable | str
    batched: bool = True
    fn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        resolve_callable(self.function)

    def __call__(self, batch: Batch) -> Batch:
        fn = resolve_callable(self.function)
        what = f"filter {describe_callable(fn)}"
        rows = num_rows(batch)
        if self.batched:
            keep = _call(fn, batch, self.fn_kwargs, what)
            if keep is None:
                raise _no_return(what, "one bool per row")
            if _length(keep) is None and not isinstance(keep, (str, bytes, Mapping)) and hasattr(keep, "__iter__"):
                keep = list(keep)  # a generator of flags
            if _length(keep) != rows:
                got = f"{_length(keep)} flags" if _length(keep) is not None else f"one {type(keep).__name__}"
                raise TransformError(
                    f"{what} returned {got} for {rows} rows; return one bool per row, or pass batched=False"
                )
        else:
            keep = [_call(fn, row, self.fn_kwargs, what) for row in _rows(batch)]
            if any(k is None for k in keep):
                raise _no_return(what, "a bool for the row (batched=False)")
        mask = np.asarray(list(keep), dtype=bool)
        return {
            k: vals[mask] if isinstance(vals, np.ndarray) else [v for v, ok in zip(vals, mask) if ok]
            for k, vals in batch.items()
        }


Step = Map | Filter | Callable


class Pipeline:
    """Steps applied in order; a bare callable counts as a batched :class:`Map`."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = [s if isinstance(s, (Map, Filter)) else Map(s) for s in steps]

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
            if not num_rows(batch):
                break
        return batch

    def __bool__(self) -> bool:
        return bool(self.steps)

    def preflight(self) -> None:
        """Run each step function's own ``preflight()``, where it has one (see :func:`preflight`)."""
        preflight(*(resolve_callable(s.function) for s in self.steps))

    @property
    def filters(self) -> list[str]:
        """The filters, named as errors name them."""
        return [describe_callable(resolve_callable(s.function)) for s in self.steps if isinstance(s, Filter)]


def preflight(*functions: Any) -> None:
    """Call ``fn.preflight()`` for each function that has one, in the main process.

    The datamodule calls it when it builds a loader, before any row is read, so that a
    function's set-up failure (a processor that cannot load) is named as that at once instead
    of surfacing in a worker beside a data row. Functions load lazily in the workers anyway;
    ``preflight`` only moves the first failure forward.
    """
    for fn in functions:
        check = getattr(fn, "preflight", None)
        if callable(check) and not isinstance(fn, type):
            check()


def as_pipeline(*specs: Step | Sequence[Step] | None) -> Pipeline:
    """Flatten ``filter``/``transform`` arguments (each a step, a list of steps or None) into a pipeline."""
    steps: list[Step] = []
    for spec in specs:
        if spec is None:
            continue
        if isinstance(spec, (list, tuple)):
            steps.extend(spec)
        else:
            steps.append(spec)
    return Pipeline(steps)
