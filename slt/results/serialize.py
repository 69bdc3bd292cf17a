"""JSON-safe conversion of result objects (numpy arrays, NaN, nested dataclasses)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "array_from_json"]


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types: arrays to nested lists, NaN and infinities to None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def array_from_json(value: Any, dtype: Any = float) -> np.ndarray:
    """Inverse of :func:`to_jsonable` for arrays: ``None`` becomes NaN for float arrays."""
    if dtype is float:
        return np.array(_none_to_nan(value), dtype=float)
    return np.array(value, dtype=dtype)


def _none_to_nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return value
