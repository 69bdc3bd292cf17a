"""The one progress bar every long-running step of slt shows (tqdm), or none."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool | str, total: int | None, description: str, unit: str = "step") -> Any:
    """A ``tqdm`` bar of ``total`` units (``None``: a counter without total), or ``None`` when disabled.

    A string ``enabled`` replaces ``description``.
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=enabled if isinstance(enabled, str) else description,
        unit=unit,
        leave=False,
    )
