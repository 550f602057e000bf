"""Learning-rate schedules sized from the known length (``trainer.estimated_stepping_batches``)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["warmup_cosine"]


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """``LambdaLR`` factor: linear warmup over ``warmup`` steps, then cosine down to ``floor``.

    Example:
        >>> f = warmup_cosine(10, 100)
        >>> round(f(0), 3), f(10), round(f(100), 3)
        (0.091, 1.0, 0.0)
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
