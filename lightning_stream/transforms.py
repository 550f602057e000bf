"""Lazy preprocessing with ``datasets``' ``map``/``filter`` semantics, run inside the workers.

A pipeline is a list of :class:`Map` and :class:`Filter` steps applied to a batch given as
``dict[str, list]`` (decoded values, as ``Dataset.map(batched=True)`` passes them). Nothing is
cached: the output lives until the batch is collated.

A plain callable is a batched :class:`Map`. A function may be given by import path
(``"mypkg.prep.tokenize"``), which is how YAML configs name it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from .rng import current_rng

__all__ = ["Map", "Filter", "Pipeline", "as_pipeline", "resolve_callable"]

Batch = dict[str, list]


def resolve_callable(fn: Union[Callable, str]) -> Callable:
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


def _num_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _rows(batch: Batch) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def _columns(rows: list[dict], keys: Sequence[str]) -> Batch:
    return {k: [row[k] for row in rows] for k in keys}


def _call(fn: Callable, arg: Any, fn_kwargs: dict, name: str) -> Any:
    try:
        return fn(arg, **fn_kwargs)
    except KeyError as err:
        raise KeyError(f"{name}: column {err.args[0]!r} not found in the batch (columns: {list(arg)})") from err


@dataclass
class Map:
    """``Dataset.map`` for one step of the pipeline.

    Args:
        function: ``fn(batch: dict[str, list], **fn_kwargs) -> dict[str, list]`` when ``batched``,
            else ``fn(row: dict, **fn_kwargs) -> dict``; or its import path.
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

    function: Union[Callable, str]
    batched: bool = True
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    remove_columns: Optional[list[str]] = None
    with_rng: bool = False

    def __call__(self, batch: Batch) -> Batch:
        fn = resolve_callable(self.function)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        kwargs = {**self.fn_kwargs, "rng": current_rng()} if self.with_rng else self.fn_kwargs
        if self.batched:
            out = _call(fn, batch, kwargs, name)
        else:
            outs = [_call(fn, row, kwargs, name) for row in _rows(batch)]
            out = _columns(outs, list(outs[0])) if outs else {}
        if not isinstance(out, dict):
            raise TypeError(f"transform {name} must return a dict of columns, got {type(out).__name__}")
        drop = set(self.remove_columns or ())
        missing = drop - set(batch)
        if missing:
            raise KeyError(f"transform {name}: remove_columns {sorted(missing)} not in the batch (columns: {list(batch)})")
        merged = {k: v for k, v in batch.items() if k not in drop}
        merged.update(out)
        lengths = {k: len(v) for k, v in merged.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"transform {name} returned columns of unequal length {lengths}; when it changes the number of rows, "
                "remove the input columns with remove_columns"
            )
        return merged


@dataclass
class Filter:
    """``Dataset.filter`` for one step of the pipeline.

    Rows it rejects are removed from the batch they are in: the batch gets smaller, so the number
    of steps per epoch (and every rank's step count) stays fixed and known.

    Example:
        >>> Filter(lambda b: [t != "" for t in b["text"]])({"text": ["a", ""]})
        {'text': ['a']}
    """

    function: Union[Callable, str]
    batched: bool = True
    fn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: Batch) -> Batch:
        fn = resolve_callable(self.function)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if self.batched:
            keep = list(_call(fn, batch, self.fn_kwargs, name))
        else:
            keep = [bool(_call(fn, row, self.fn_kwargs, name)) for row in _rows(batch)]
        if len(keep) != _num_rows(batch):
            raise ValueError(f"filter {name} returned {len(keep)} flags for {_num_rows(batch)} rows")
        mask = np.asarray(keep, dtype=bool)
        return {k: vals[mask] if isinstance(vals, np.ndarray) else [v for v, ok in zip(vals, mask) if ok] for k, vals in batch.items()}


Step = Union[Map, Filter, Callable]


class Pipeline:
    """Steps applied in order; a bare callable counts as a batched :class:`Map`."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = [s if isinstance(s, (Map, Filter)) else Map(s) for s in steps]

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
            if not _num_rows(batch):
                break
        return batch

    def __bool__(self) -> bool:
        return bool(self.steps)


def as_pipeline(*specs: Union[Step, Sequence[Step], None]) -> Pipeline:
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
