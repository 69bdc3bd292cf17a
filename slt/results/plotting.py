"""Small matplotlib helpers shared by the result objects (matplotlib is imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["panels"]


def panels(ax: Any, count: int, figsize: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """The figure and a flat array of ``count`` axes: new ones side by side, or the caller's ``ax``."""
    if ax is None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, count, figsize=figsize, constrained_layout=True)
        return fig, np.ravel(axes)
    axes = np.ravel(ax)
    if axes.size < count:
        raise ValueError(f"this plot needs {count} axes, got {axes.size}")
    return axes[0].figure, axes
