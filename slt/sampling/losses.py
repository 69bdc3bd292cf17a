"""Loss functions: ``loss_fn(model, batch) -> scalar mean loss`` and the string shortcuts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossFn", "resolve_loss", "mse", "cross_entropy"]

LossFn = Callable[[nn.Module, Any], Tensor]


def _inputs_targets(batch: Any, name: str) -> tuple[Any, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f'loss_fn="{name}" expects batches of (inputs, targets); got {type(batch).__name__}'
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + ". Pass a callable loss_fn(model, batch) for other batch layouts."
        )
    return batch[0], batch[1]


def mse(model: nn.Module, batch: Any) -> Tensor:
    """Mean squared error ``mean((model(x) - y)**2)`` over a batch ``(x, y)``."""
    x, y = _inputs_targets(batch, "mse")
    return F.mse_loss(model(x), y)


def cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Mean cross-entropy of logits ``model(x)`` against class indices ``y`` over a batch ``(x, y)``."""
    x, y = _inputs_targets(batch, "cross_entropy")
    return F.cross_entropy(model(x), y)


_SHORTCUTS: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy}


def resolve_loss(loss_fn: str | LossFn) -> LossFn:
    """Turn ``"mse"``, ``"cross_entropy"`` or a callable ``loss_fn(model, batch)`` into a callable."""
    if isinstance(loss_fn, str):
        try:
            return _SHORTCUTS[loss_fn]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss_fn!r}; use 'mse', 'cross_entropy' or a callable loss_fn(model, batch)"
            ) from None
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a string or a callable, got {type(loss_fn).__name__}")
    return loss_fn


def check_scalar(loss: Any) -> Tensor:
    """Raise a clear ``ValueError`` unless ``loss`` is a scalar tensor."""
    if not isinstance(loss, Tensor):
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar mean loss, got a tensor of shape {tuple(loss.shape)}; "
            "reduce it with .mean() over the batch"
        )
    return loss.reshape(())
