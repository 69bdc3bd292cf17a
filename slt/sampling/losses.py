"""Loss functions: ``loss_fn(model, batch) -> scalar mean loss`` and the string shortcuts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossFn", "resolve_loss", "mse", "cross_entropy", "check_batch", "IGNORE_INDEX"]

#: The label ``torch.nn.functional.cross_entropy`` skips by default.
IGNORE_INDEX = -100

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
    out = model(x)
    if out.shape != y.shape:
        raise ValueError(
            f'loss_fn="mse": the model\'s outputs have shape {tuple(out.shape)} but the targets have shape '
            f"{tuple(y.shape)}; they would be broadcast against each other and give a wrong loss. Give the "
            "targets the outputs' shape (for example y.reshape(-1, 1) for one output), or pass a callable "
            "loss_fn"
        )
    return F.mse_loss(out, y)


def cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Mean cross-entropy of logits ``model(x)`` against class indices ``y`` over a batch ``(x, y)``.

    Every sample counts in ``n``, so labels equal to the ignore value -100 are refused (by
    :func:`check_batch`, on the full-data pass before sampling).
    """
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


def check_batch(loss_fn: LossFn, batch: Any) -> None:
    """Refuse a batch the built-in ``loss_fn`` would silently get wrong (called once per sample).

    With the built-in ``"cross_entropy"``, targets equal to -100 (torch's ``ignore_index``) would be left
    out of the loss but still counted in the sample size ``n``, which sets the temperature and scales
    the estimate.

    Raises
    ------
    ValueError
        Naming how many labels are -100 and what to do instead.
    """
    if loss_fn is not cross_entropy or not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return
    y = batch[1]
    if isinstance(y, Tensor) and not y.is_floating_point():
        ignored = int((y == IGNORE_INDEX).sum())
        if ignored:
            raise ValueError(
                f'loss_fn="cross_entropy": {ignored} targets are -100, the label torch ignores, but slt '
                "counts every sample in n (which sets the temperature and scales the estimate). Drop those "
                "samples from the data, or pass a callable loss_fn with the data reduced to the samples "
                "that count"
            )


def check_scalar(loss: Any) -> Tensor:
    """Return ``loss`` as a 0-d tensor; raise a clear ``ValueError`` unless it holds exactly one value.

    A one-element tensor such as shape ``(1,)`` is accepted as the scalar it holds.
    """
    if not isinstance(loss, Tensor):
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar mean loss, got a tensor of shape {tuple(loss.shape)}; "
            "reduce it with .mean() over the batch"
        )
    return loss.reshape(())
