"""Checks a sweep runs once, before any checkpoint: the model factory, the device, the data and the loss.

Without them a setting that can never work (a factory that is not callable, ``device="cuda"`` on a CPU
build, data the loss cannot take, a loss that is not a finite scalar) fails once per checkpoint and
fills the store with identical failed rows. :func:`preflight` builds the model once, loads the first
checkpoint into it when it loads, and evaluates the loss on one batch of the data (and of the test
data); every failure is a :class:`~slt.warnings.SetupError` naming the setting to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slt.sampling.data import as_data_source, move_to
from slt.sampling.losses import check_batch, check_scalar, resolve_loss
from slt.sampling.rng import isolated_rng, preserved_generators
from slt.sampling.settings import check_device
from slt.sweeps.checkpoints import Checkpoint, build_model
from slt.sweeps.measures import MeasureSpec
from slt.warnings import CheckpointError, SetupError

__all__ = ["preflight", "check_model_factory", "check_loss_on_data"]

#: Samples of the data the loss is evaluated on.
PREFLIGHT_SAMPLES = 64


def check_model_factory(model_factory: Any) -> nn.Module:
    """Call ``model_factory()`` once and return the model it builds.

    Raises
    ------
    SetupError
        When ``model_factory`` is not callable, raises, or returns something other than an ``nn.Module``.
    """
    if isinstance(model_factory, nn.Module):
        raise SetupError(
            f"model_factory must build a fresh model, got a {type(model_factory).__name__} instance; pass "
            "its class or a function that returns a new one (each checkpoint's weights are loaded into it)"
        )
    if not callable(model_factory):
        raise SetupError(
            f"model_factory must be a callable that returns a fresh model (a class or a function), got "
            f"{type(model_factory).__name__} {_short(model_factory)}"
        )
    try:
        model = model_factory()
    except Exception as exc:
        raise SetupError(f"model_factory() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise SetupError(
            f"model_factory() must return a torch.nn.Module, got {type(model).__name__}; pass the model "
            "class or a function that builds the model, not the model's output"
        )
    return model


def check_loss_on_data(
    model: nn.Module, data: Any, loss_fn: Any, device: torch.device, what: str = "data"
) -> float:
    """Evaluate ``loss_fn`` on the first samples of ``data`` at ``model``'s weights and return it.

    The data's own random streams (loader generators) are left as they were.

    Raises
    ------
    SetupError
        When the data cannot be read, the loss raises, or it is not a finite scalar.
    """
    loss = resolve_loss(loss_fn)
    with preserved_generators(data):
        try:
            source = as_data_source(data, torch.device("cpu"))
            batch = next(iter(source.full_batches()), None)
        except Exception as exc:
            raise SetupError(f"{what} cannot be read: {type(exc).__name__}: {exc}") from exc
    if batch is None:
        raise SetupError(f"{what} is empty: iterating it gave no batch; pass at least one sample")
    batch = move_to(_head(batch, PREFLIGHT_SAMPLES), device)
    try:
        check_batch(loss, batch)
        with torch.no_grad():
            value = check_scalar(loss(model, batch))
    except Exception as exc:
        raise SetupError(
            f"loss_fn on the first {PREFLIGHT_SAMPLES} samples of {what} failed: {type(exc).__name__}: {exc}"
        ) from exc
    result = float(value)
    if result != result or result in (float("inf"), float("-inf")):
        raise SetupError(
            f"loss_fn on the first {PREFLIGHT_SAMPLES} samples of {what} is not finite ({result}) at the "
            "first checkpoint; check the model, the data and loss_fn"
        )
    return result


def preflight(
    model_factory: Callable[[], nn.Module],
    spec: MeasureSpec,
    first: Checkpoint | None = None,
    *,
    allow_pickle: bool = False,
    state_dict_key: str | None = None,
    state_dict_prefix: str | None = None,
) -> None:
    """Check once what every checkpoint of a sweep shares; raise :class:`~slt.warnings.SetupError` if broken.

    Parameters
    ----------
    model_factory : callable
        Builds the model.
    spec : MeasureSpec
        The measures, data, test data, loss and device (measure settings were validated when it was built).
    first : Checkpoint, optional
        The first checkpoint; when it loads, the loss is evaluated at its weights (else at the fresh
        model's, and the checkpoint's own error is left to its row).
    """
    try:
        device = check_device(spec.device) if spec.device is not None else None
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    with isolated_rng(0):
        model = check_model_factory(model_factory)
        if first is not None:
            try:
                state_dict = first.load_state_dict(
                    allow_pickle=allow_pickle,
                    state_dict_key=state_dict_key,
                    state_dict_prefix=state_dict_prefix,
                )
                model = build_model(lambda: model, state_dict, first.source)
            except CheckpointError:
                pass  # this checkpoint's own problem; the sweep records it on its row
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model = model.to(device).eval()
        check_loss_on_data(model, spec.data, spec.loss_fn, device)
        if spec.test_data is not None:
            check_loss_on_data(model, spec.test_data, spec.loss_fn, device, what="test_data")


def _head(batch: Any, k: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:k] if batch.ndim else batch
    if isinstance(batch, dict):
        return type(batch)({key: _head(v, k) for key, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_head(v, k) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_head(v, k) for v in batch)
    return batch


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
