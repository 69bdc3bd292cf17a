"""Settings shared by every estimator: nβ's default, range checks and the device."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["default_n_beta", "validate_settings", "check_seed", "check_device", "resolve_device"]

#: Seeds are 64-bit unsigned integers (what ``torch.manual_seed`` accepts).
MAX_SEED = 2**64 - 1


def default_n_beta(n: int) -> float:
    r"""The default inverse temperature times sample size, :math:`n\beta^* = n / \log n`.

    For ``n < 3`` (where :math:`\log n \le 1`) this returns ``n``.
    """
    if n < 3:
        return float(n)
    return n / math.log(n)


def validate_settings(
    *,
    n_beta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    num_chains: int | None = None,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    num_steps_bw_draws: int | None = None,
    seed: int | None = None,
    precision: float | None = None,
    target_bias: float | None = None,
) -> None:
    """Raise ``ValueError`` with a suggestion for any out-of-range sampling setting."""
    if seed is not None:
        check_seed(seed)
    if n_beta is not None and not (math.isfinite(n_beta) and n_beta > 0):
        raise ValueError(f"n_beta must be a positive number, got {n_beta}; leave it None for n/log n")
    if localization is not None and not (math.isfinite(localization) and localization >= 0):
        raise ValueError(f"localization must be >= 0, got {localization}; 1.0 is a common choice")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(
            f"step_size must be a positive number, got {step_size}; leave it None for the default "
            "or use slt.calibrate to choose one"
        )
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_draws", num_draws, 1),
        ("num_burnin", num_burnin, 0),
        ("num_steps_bw_draws", num_steps_bw_draws, 1),
    ):
        if value is not None and (
            not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < low
        ):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if precision is not None and not (_is_real(precision) and 0 < precision <= 1):
        raise ValueError(
            f"precision must be a relative standard error in (0, 1], got {precision!r}; 0.05 is the default, "
            "0.025 asks for about four times the draws"
        )
    if target_bias is not None and not (_is_real(target_bias) and 0 < target_bias <= 0.25):
        raise ValueError(
            f"target_bias must be a relative step-size bias in (0, 0.25], got {target_bias!r}; 0.05 is the "
            "default, 0.025 halves the step"
        )


def _is_real(value: object) -> bool:
    real = isinstance(value, (int, float, np.floating, np.integer))
    return real and not isinstance(value, (bool, np.bool_))


def check_seed(seed: object) -> int:
    """Return ``seed`` as an ``int``, or raise a clear error unless it is an integer in ``[0, 2**64)``.

    Raises
    ------
    TypeError
        For anything but an integer (``True`` included).
    ValueError
        For a negative seed or one that does not fit in 64 bits.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1 (it seeds torch), got {seed}")
    return int(seed)


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device to sample on: ``device`` if given, else that of the model's first parameter.

    Raises
    ------
    ValueError
        When ``device`` is None and the model has no parameters, or ``device`` is not available (see
        :func:`check_device`).
    """
    if device is not None:
        return check_device(device)
    for p in model.parameters():
        return p.device
    raise ValueError(
        "the model has no parameters at all; slt estimates the learning coefficient of trainable weights"
    )


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``, or a clear ``ValueError`` when this process cannot use it.

    Catches what torch reports late or obscurely: an unknown device string, ``"cuda"`` on a build of
    torch without CUDA or a machine without a GPU, a CUDA index beyond the GPUs visible, an unavailable
    ``"mps"``.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"device {device!r} is not a device torch knows ({exc}); use 'cpu' or 'cuda'"
        ) from exc
    if resolved.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device {str(device)!r} asks for CUDA, but this torch {torch.__version__} is built without "
                "CUDA; use device='cpu' or install a CUDA build of torch"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {str(device)!r} asks for CUDA, but no GPU is visible to this process "
                "(check CUDA_VISIBLE_DEVICES and the driver); use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: {count} GPU(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine; use device='cpu'")
    return resolved
