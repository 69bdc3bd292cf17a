"""The JSON round trip every result type shares, with its problems emitted again on reload."""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from typing import Any, TypeVar

from slt.results.serialize import from_jsonable, to_jsonable
from slt.warnings import emit

__all__ = ["JSONResult"]

R = TypeVar("R", bound="JSONResult")


class JSONResult:
    """Mixin for result dataclasses with a ``problems`` field: dictionaries, JSON files, warnings again.

    ``to_dict``/``from_dict`` convert by the dataclass's field types (NaN stored as ``None``);
    ``from_json`` emits the stored problems again, so a reloaded result warns as the original did.
    """

    problems: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dictionary (NaN as ``None``), problems included; see :meth:`from_dict`."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Rebuild a result from :meth:`to_dict` output (its problems kept, not emitted)."""
        return from_jsonable(cls, data)

    def to_json(self, path: str | PathLike[str]) -> None:
        """Write :meth:`to_dict` to a JSON file."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh)

    @classmethod
    def from_json(cls: type[R], path: str | PathLike[str]) -> R:
        """Read a result written by :meth:`to_json`, emitting its problems again as warnings."""
        with open(path) as fh:
            result = cls.from_dict(json.load(fh))
        emit(result.problems, stacklevel=2)
        return result
