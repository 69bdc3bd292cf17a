"""JSON-safe conversion of result objects (numpy arrays, NaN, nested dataclasses)."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "from_jsonable", "array_from_json"]


T = typing.TypeVar("T")


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
    if isinstance(value, Mapping):  # read-only views, such as a kernel's options
        return {str(k): to_jsonable(v) for k, v in value.items()}
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


def from_jsonable(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from :func:`to_jsonable` output, guided by its fields' type hints.

    ``float`` fields turn ``None`` back into NaN; ``ndarray`` fields become arrays (``None`` entries NaN;
    lists of bools or integers keep their dtype); nested dataclasses, ``tuple[X, ...]``, ``list[X]``,
    ``dict[str, X]`` and ``X | None`` are rebuilt recursively. Fields missing from ``data`` take their
    defaults, so results written by an older version still load.

    Raises
    ------
    TypeError
        When a field without a default is missing.
    """
    hints = typing.get_type_hints(cls)
    values = {
        f.name: _restore(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data
    }
    return cls(**values)


def _restore(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _restore(hint, value)
    if hint is float:
        return math.nan if value is None else float(value)
    if hint is int:
        return int(value)
    if hint is np.ndarray:
        return _array(value)
    if dataclasses.is_dataclass(hint):
        return from_jsonable(hint, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_restore(args[0], v) for v in value)
        return tuple(_restore(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is list:
        return [_restore(args[0], v) for v in value] if args else list(value)
    if origin in (dict, Mapping, collections.abc.Mapping):
        return {k: _restore(args[1], v) for k, v in value.items()} if args else dict(value)
    return value


def _array(value: Any) -> np.ndarray:
    if value is None:
        return np.array(math.nan)
    flat = list(_leaves(value))
    if flat and all(isinstance(v, bool) for v in flat):
        return np.array(value, dtype=bool)
    if flat and all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return np.array(value, dtype=np.int64)
    return array_from_json(value)


def _leaves(value: Any) -> Any:
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
