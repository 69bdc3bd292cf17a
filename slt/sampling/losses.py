"""Loss functions: ``loss_fn(model, batch) -> scalar mean loss``, the string shortcuts and the default.

A ``loss_fn`` may return the loss itself (a scalar tensor), a dict with a ``"loss"`` entry, or an object
with a ``.loss`` tensor such as a Hugging Face ``ModelOutput``: :func:`resolve_loss` wraps it so that the
rest of slt always sees the scalar. Without a ``loss_fn``, :func:`model_loss` calls the model on each
batch and takes the loss the model computes itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LossFn",
    "resolve_loss",
    "mse",
    "cross_entropy",
    "model_loss",
    "extract_loss",
    "check_batch",
    "IGNORE_INDEX",
]

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


def _model_tensor(output: Any, name: str) -> Tensor:
    """``output`` if the model returned a tensor; otherwise a message that says how to pick one out."""
    if isinstance(output, Tensor):
        return output
    kind = type(output).__name__
    if isinstance(output, (tuple, list)):
        held, pick = f" of length {len(output)}", "[0]"
    elif isinstance(output, Mapping):
        keys = [str(k) for k in output]
        chosen = "logits" if "logits" in keys or not keys else keys[0]
        held, pick = f" (fields: {_fields(output)})", f'["{chosen}"]'
    else:
        held, pick = "", ".logits"
    function = "mse_loss" if name == "mse" else "cross_entropy"
    raise TypeError(
        f'loss_fn="{name}" needs a model that returns a tensor, but it returned a {kind}{held}. Pass a '
        "callable loss_fn(model, batch) that picks the outputs, for example "
        f"lambda model, batch: torch.nn.functional.{function}(model(batch[0]){pick}, batch[1])"
    )


def mse(model: nn.Module, batch: Any) -> Tensor:
    """Mean squared error ``mean((model(x) - y)**2)`` over a batch ``(x, y)``.

    Raises
    ------
    ValueError
        When the outputs' shape differs from the targets' (they would broadcast to a wrong loss).
    TypeError
        When the model returns something other than a tensor.
    """
    x, y = _inputs_targets(batch, "mse")
    out = _model_tensor(model(x), "mse")
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

    Logits of shape ``(N, C)`` against labels ``(N,)``; for sequences, one label per position, either
    with the classes last, ``(N, L, C)`` against ``(N, L)`` (a language model's layout: the mean over
    every position), or with the classes second, ``(N, C, d1, ...)`` against ``(N, d1, ...)`` (torch's
    layout). Every sample counts in ``n``, so labels equal to the ignore value -100 are refused (by
    :func:`check_batch`, on the full-data pass before sampling).

    Raises
    ------
    TypeError
        When the model returns something other than a tensor (a dict, a tuple): the message says to pass a
        callable ``loss_fn`` that picks the logits.
    ValueError
        When the logits have a single class (a cross-entropy over one class is identically zero); when
        the labels fit neither layout; when they fit both (``(N, L, L)`` logits against ``(N, L)``
        labels: torch would read the positions as classes); for floating targets of more than two
        dimensions (class probabilities, whose class dimension is as ambiguous).
    """
    x, y = _inputs_targets(batch, "cross_entropy")
    logits = _model_tensor(model(x), "cross_entropy")
    if torch.is_floating_point(y):
        if y.shape != logits.shape:
            raise ValueError(
                f'loss_fn="cross_entropy": the targets are {y.dtype} of shape {tuple(y.shape)} but the '
                f"logits have shape {tuple(logits.shape)}. Class indices must be integers (y.long()); "
                "floating targets are read as class probabilities and need the logits' shape"
            )
        if logits.ndim > 2:
            raise ValueError(
                f'loss_fn="cross_entropy": class probabilities of shape {tuple(y.shape)} leave it open '
                "which dimension holds the classes. Pass a callable loss_fn, for example "
                "lambda model, batch: torch.nn.functional.cross_entropy(model(batch[0]).flatten(0, -2), "
                "batch[1].flatten(0, -2)) for classes last"
            )
        class_dim = logits.ndim - 1
    else:
        class_dim = _class_dim(logits, y)
    if logits.ndim < 1 or logits.shape[class_dim] == 1:
        raise ValueError(
            f'loss_fn="cross_entropy": the model has a single output (logits of shape '
            f"{tuple(logits.shape)}), "
            'and a cross-entropy over one class is identically zero. For regression use loss_fn="mse"; '
            "for a binary classifier with one logit pass loss_fn=lambda model, batch: "
            "torch.nn.functional.binary_cross_entropy_with_logits(model(batch[0]), batch[1])"
        )
    if logits.ndim > 2 and class_dim == logits.ndim - 1:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def _class_dim(logits: Tensor, labels: Tensor) -> int:
    """The dimension of ``logits`` holding the classes for integer ``labels``: last or second.

    Raises
    ------
    ValueError
        When the labels fit neither layout, or both (then torch's layout would silently read the
        positions as classes).
    """
    if logits.ndim <= 2:
        return logits.ndim - 1
    last = tuple(logits.shape[:-1]) == tuple(labels.shape)
    second = (
        labels.ndim == logits.ndim - 1
        and logits.shape[0] == labels.shape[0]
        and tuple(logits.shape[2:]) == tuple(labels.shape[1:])
    )
    flatten = (
        "lambda model, batch: torch.nn.functional.cross_entropy(model(batch[0]).flatten(0, -2), "
        "batch[1].flatten())"
    )
    if last and second:
        raise ValueError(
            f'loss_fn="cross_entropy": logits of shape {tuple(logits.shape)} against labels of shape '
            f"{tuple(labels.shape)} fit both layouts, classes last (a language model's (N, L, C)) and "
            "classes second (torch's (N, C, L)), and the two give different losses. Pass a callable "
            f"loss_fn: {flatten} for classes last, or lambda model, batch: "
            "torch.nn.functional.cross_entropy(model(batch[0]), batch[1]) for classes second"
        )
    if last:
        return logits.ndim - 1
    if second:
        return 1
    raise ValueError(
        f'loss_fn="cross_entropy": logits of shape {tuple(logits.shape)} do not fit labels of shape '
        f"{tuple(labels.shape)}: expected one label per row of logits with the classes last (logits "
        "(N, L, C) against labels (N, L)) or second (torch's (N, C, L) against (N, L)). For a model that "
        "predicts the next token, give the labels it predicts ((ids[:, :-1], ids[:, 1:])), or pass a "
        f"callable loss_fn, for example {flatten}"
    )


def extract_loss(output: Any, source: str = "loss_fn") -> Tensor:
    """The loss tensor inside what a loss function or a model returned.

    Parameters
    ----------
    output : Tensor, mapping with a ``"loss"`` entry, or object with a ``.loss`` tensor
        A scalar tensor is returned as it is; a Hugging Face ``ModelOutput`` (a mapping that also has
        the attribute) gives its ``loss``.
    source : str
        What produced ``output``, for the message.

    Raises
    ------
    ValueError
        When ``output`` holds no loss tensor: an output whose ``loss`` is ``None`` (the model was not
        given its targets) is told to add them, anything else to return a scalar tensor.
    """
    if isinstance(output, Tensor):
        return output
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(loss, Tensor):
        return loss
    kind = type(output).__name__
    if isinstance(output, Mapping) or hasattr(output, "loss") or hasattr(output, "logits"):
        raise ValueError(
            f"{source} returned a {kind} without a loss (fields: {_fields(output)}). A model computes its "
            "own loss only when the batch holds the targets: for Hugging Face models add 'labels' to each "
            "batch (for a causal language model, labels = input_ids; -100 marks positions to skip), or "
            "pass loss_fn(model, batch) returning the mean loss"
        )
    raise ValueError(
        f"{source} must return a scalar tensor, a dict with a 'loss' entry or an output with a .loss "
        f"tensor, got {kind}"
    )


def _fields(output: Any) -> str:
    keys = list(output.keys()) if isinstance(output, Mapping) else [k for k in vars(output) if k[0] != "_"]
    return ", ".join(map(str, keys[:8])) or "none"


def model_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss the model computes itself: ``model(**batch)`` for a dict, ``model(*batch)`` for a tuple.

    The default when no ``loss_fn`` is given. Hugging Face models return a ``ModelOutput`` whose
    ``loss`` is the mean cross-entropy over the label tokens (positions labelled -100 left out) when
    the batch holds ``labels``; any model returning a scalar tensor, a dict with ``"loss"`` or an
    object with ``.loss`` works.

    Raises
    ------
    ValueError
        When the output holds no loss (see :func:`extract_loss`): a model that returns predictions
        needs ``loss_fn="mse"``, ``"cross_entropy"`` or a callable.
    TypeError
        When the model does not take the batch that way (its message kept, the remedy added).
    """
    try:
        if isinstance(batch, Mapping):
            output = model(**batch)
        elif isinstance(batch, (tuple, list)):
            output = model(*batch)
        else:
            output = model(batch)
    except TypeError as exc:  # the signature does not fit: most likely a model that returns predictions
        layout = "model(**batch)" if isinstance(batch, Mapping) else "model(*batch)"
        raise TypeError(
            f"loss_fn is not given, so slt called {layout} to get the loss the model computes itself, and "
            f"that failed: {exc}. For a model that returns predictions pass loss_fn='mse', "
            "'cross_entropy' or a callable loss_fn(model, batch) returning the mean loss"
        ) from exc
    if isinstance(output, Tensor) and output.numel() != 1:
        raise ValueError(
            f"loss_fn is not given, so slt called the model on each batch and expected the loss it "
            f"computes, but it returned a tensor of shape {tuple(output.shape)} (predictions?). Pass "
            "loss_fn='mse', 'cross_entropy' or a callable loss_fn(model, batch) returning the mean loss"
        )
    return extract_loss(output, "the model (called without a loss_fn)")


class _Extracting:
    """A user's ``loss_fn`` whose output is reduced to its loss tensor by :func:`extract_loss`."""

    def __init__(self, fn: LossFn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        return extract_loss(self.fn(model, batch))


_SHORTCUTS: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy, "model": model_loss}


def resolve_loss(loss_fn: str | LossFn | None) -> LossFn:
    """Turn ``"mse"``, ``"cross_entropy"``, ``None`` or a callable ``loss_fn(model, batch)`` into a callable.

    ``None`` (or ``"model"``) gives :func:`model_loss`, the loss the model computes itself. A callable
    may return a scalar tensor, a dict with ``"loss"`` or an object with ``.loss`` (see
    :func:`extract_loss`); the returned callable always gives the tensor.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything else that is not callable.
    """
    if loss_fn is None:
        return model_loss
    if isinstance(loss_fn, str):
        try:
            return _SHORTCUTS[loss_fn]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss_fn!r}; use 'mse', 'cross_entropy', 'model' (the loss the model "
                "computes itself) or a callable loss_fn(model, batch)"
            ) from None
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a string or a callable, got {type(loss_fn).__name__}")
    if isinstance(loss_fn, _Extracting) or loss_fn in _SHORTCUTS.values():
        return loss_fn
    return _Extracting(loss_fn)


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
