"""The token plans of one dataset: its rows' lengths, measured once, and each epoch's plan.

Token-budget steps (``budget.py``) and token blocks (``blocks.py``) are both planned from every
row's length before the epoch starts. :class:`TokenPlans` owns that lifecycle: the lengths are
measured in the main process when the loader first asks for the layout (``len()``), checked
against the budget, and travel to the workers with the dataset; each process plans the epochs
it serves and keeps the current and the previous one. The steps per lane of token-budget plans
are fixed by epoch 0, so every epoch has the length ``len()`` said.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blocks import BlockLayout, Blocks
from .budget import Budget, BudgetLayout, Plan, RowTooLongError, Rules, plan_epoch
from .lengths import RowLengths, measure
from .order import EpochOrder
from .stores import open_store

__all__ = ["TokenPlans"]


class TokenPlans:
    """Lengths and epoch plans for ``options.batch_tokens`` or ``options.block_size`` (else inactive)."""

    def __init__(self, source: Any, options: Any) -> None:
        self.source, self.options = source, options
        self._lengths: RowLengths | None = None
        self._plans: dict[tuple[int, int], Any] = {}  # (epoch, lanes): the epoch's Plan or Blocks
        self._per_lane: dict[int, int] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_plans": {}}  # the lengths travel; plans are made where they are used

    @property
    def active(self) -> bool:
        return self.options.batch_tokens is not None or self.options.block_size is not None

    def layout(self, store: Any, start: int, *, epoch: int, lanes: int, world_size: int) -> BudgetLayout | BlockLayout:
        if self.options.batch_tokens is not None:
            plan, left_out = self.plan(store, epoch, lanes)
            return BudgetLayout(plan, start, world_size, left_out)
        return BlockLayout(self.blocks(store, epoch, lanes), start, world_size, self.lengths(store).tokens)

    def lengths(self, store: Any) -> RowLengths:
        """Every row's tokens (and images) before the transform, measured once (``lengths.py``)."""
        if self._lengths is None:
            o = self.options
            if not store.random_access or not isinstance(
                store.epoch_order(seed=0, epoch=0, shuffle=False, window=1), EpochOrder
            ):
                raise ValueError(
                    f"batch_tokens and block_size need the rows of {store.where} by index (parquet, arrow, a "
                    "datasets.Dataset), to plan each epoch's steps from their lengths before it starts; a stream or "
                    "a Mix is read in fixed batches (batch_size)"
                )
            cache = {"cache_rows": o.cache_rows, "cache_windows": o.cache_windows}
            lengths = measure(store, o.length, source=self.source, open_store=lambda s: open_store(s, **cache))
            if o.max_images is not None and lengths.images is None:
                raise ValueError(
                    f"max_images={o.max_images} needs each row's images, but length={o.length!r} gives only tokens: "
                    "pass a function of a row that returns (tokens, images), e.g. "
                    "lightning_stream.TokensAndImages('num_tokens', 'images')"
                )
            _check_fits(lengths, o, store)
            self._lengths = lengths
        return self._lengths

    def _lane_rows(self, store: Any, epoch: int, lanes: int) -> list[np.ndarray]:
        o = self.options
        order = store.epoch_order(
            seed=o.seed, epoch=epoch, shuffle=o.shuffle, window=o.window, lanes=lanes, batch_size=o.batch_size
        )
        return [order.lane_rows(k, np.arange(int(size))) for k, size in enumerate(order.lane_sizes)]

    def _keep(self, key: tuple[int, int], value: Any) -> Any:
        self._plans = {k: v for k, v in self._plans.items() if k[0] >= key[0] - 1}  # this pass's and the last
        self._plans[key] = value
        return value

    def blocks(self, store: Any, epoch: int, lanes: int) -> Blocks:
        """Epoch ``epoch``'s token stream over ``lanes`` lanes (``blocks.py``)."""
        key = (epoch, lanes)
        if key not in self._plans:
            o = self.options
            rows = np.concatenate(self._lane_rows(store, epoch, lanes))
            ends = np.cumsum(self.lengths(store).tokens[rows])
            self._keep(key, Blocks(rows, ends, o.block_size, o.batch_size, lanes))
        return self._plans[key]

    def plan(self, store: Any, epoch: int, lanes: int) -> tuple[Plan, int]:
        """Epoch ``epoch``'s token-budget steps over ``lanes`` lanes, and the rows it leaves out."""
        key = (epoch, lanes)
        if key not in self._plans:
            per_lane = self._per_lane.get(lanes)
            if per_lane is None and epoch != 0:
                per_lane = self._per_lane.setdefault(lanes, self.plan(store, 0, lanes)[0].num_steps // lanes)
            o, lengths = self.options, self.lengths(store)
            rules = Rules(Budget(o.batch_tokens, o.batch_size, o.max_images), o.window, o.shuffle, o.seed)
            lane_rows = self._lane_rows(store, epoch, lanes)
            planned = plan_epoch(lane_rows, lengths.tokens, lengths.images, rules, epoch=epoch, per_lane=per_lane)
            if per_lane is None:
                self._per_lane[lanes] = planned[0].num_steps // lanes
            self._keep(key, planned)
        return self._plans[key]


def _check_fits(lengths: RowLengths, options: Any, store: Any) -> None:
    """Every row fits one step: its tokens within ``batch_tokens``, its images within ``max_images``."""
    for what, values, cap, name in (
        ("tokens", lengths.tokens, options.batch_tokens, "batch_tokens"),
        ("images", lengths.images, options.max_images, "max_images"),
    ):
        if values is None or cap is None:
            continue
        over = np.flatnonzero(values > cap)
        if len(over):
            first = int(over[0])
            raise RowTooLongError(
                f"{store.describe(first)} has {int(values[first])} {what}, more than {name}={cap} allows in one step "
                f"({len(over)} rows are over it, the longest {int(values[over].max())}); raise {name}, or cut such rows "
                "before training (truncate them, or drop them with a Source of the rest)"
            )
