"""Mean ± sample standard deviation over seeds: the cell of every compare table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Stat:
    """Mean and sample standard deviation over seeds (std is None for a single seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat | None":
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return None
        arr = np.asarray(values, dtype=np.float64)
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None, int(arr.size))
