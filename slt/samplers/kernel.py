r"""Kernels as values: what a sampler is, what it needs, and its hyperparameters bound once.

A :class:`Kernel` wraps a kernel's pure ``init``/``step`` functions (blackjax style) together with what
the rest of slt needs to know about it: its hyperparameters and their defaults (read from ``step``'s
keyword-only parameters), its diagonal preconditioner if it has one, and the option that ends its
adaptation after burn-in. :meth:`Kernel.bind` checks and fixes the hyperparameters once, like optax's
``scale_by_rms(decay, eps)`` building a ``GradientTransformation``, and returns a :class:`BoundKernel`
whose ``step`` takes only the step size.

Registered kernels (:func:`register_kernel`) can be named wherever slt takes a sampler:
:func:`slt.estimate_llc`, :func:`slt.calibrate`, :func:`slt.estimate_dos`, sweeps and ``slt analyze
--sampler``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

__all__ = ["Kernel", "BoundKernel", "kernel_options"]


def kernel_options(step: Callable[..., Any]) -> dict[str, Any]:
    """The hyperparameters of a ``step`` function: its keyword-only parameters other than ``step_size``.

    Returns
    -------
    dict
        Name to default value (``inspect.Parameter.empty`` where the parameter is required).
    """
    return {
        name: p.default
        for name, p in inspect.signature(step).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "step_size"
    }


@dataclass(frozen=True)
class Kernel:
    r"""An SG-MCMC kernel of the localized tempered posterior, as a registered value.

    Parameters
    ----------
    name : str
        The name users pass as ``sampler=``.
    init : callable
        ``init(position) -> state``: start chains at ``position`` (shape ``(d,)`` or ``(chains, d)``);
        the state is a ``NamedTuple`` whose first field is ``position``.
    step : callable
        ``step(state, loss_grad, target, generator, *, step_size, **options) -> state``: one step, pure
        (the inputs are not modified). ``loss_grad`` is the minibatch gradient of the mean loss at
        ``state.position``; ``target`` a :class:`slt.samplers.LocalPosterior`.
    preconditioner : callable, optional
        ``preconditioner(state, **options) -> Tensor``: the diagonal :math:`G` multiplying the drift,
        for kernels that have one. Its value before any step must be its largest (the step-size
        default divides by it).
    adaptation_option : str, optional
        Name of the option that stops adaptation after that many steps; :meth:`bind` sets it to the
        burn-in length unless the user set it, so that draws come from a fixed kernel.
    diffusion_gain : callable, optional
        ``diffusion_gain(**options) -> float``: how many times farther than SGLD (injected variance
        :math:`\varepsilon` per step) the kernel diffuses at the same step size, which is also how many
        times more the minibatch gradient noise weighs against its injected noise. 1 when omitted (SGLD
        and its preconditioned form); :math:`2/A` for SGNHT with friction :math:`A` per step.
    options : mapping, optional
        Hyperparameters and defaults; read from ``step``'s keyword-only parameters when omitted.

    Raises
    ------
    TypeError
        When ``init`` or ``step`` is not callable or ``step`` has no ``step_size`` keyword.
    """

    name: str
    init: Callable[[Tensor], Any]
    step: Callable[..., Any]
    preconditioner: Callable[..., Tensor] | None = None
    adaptation_option: str | None = None
    options: Mapping[str, Any] = field(default=None)  # type: ignore[assignment]
    diffusion_gain: Callable[..., float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"a kernel needs a non-empty string name, got {self.name!r}")
        for label in ("init", "step"):
            if not callable(getattr(self, label)):
                raise TypeError(f"kernel {self.name!r}: {label} must be callable")
        if "step_size" not in inspect.signature(self.step).parameters:
            raise TypeError(f"kernel {self.name!r}: step must take a step_size keyword")
        options = kernel_options(self.step) if self.options is None else dict(self.options)
        object.__setattr__(self, "options", MappingProxyType(options))
        if self.adaptation_option is not None and self.adaptation_option not in options:
            raise TypeError(
                f"kernel {self.name!r}: adaptation option {self.adaptation_option!r} is not an option "
                f"of its step ({sorted(options)})"
            )

    @classmethod
    def from_module(cls, module: Any) -> Kernel:
        """A kernel from an object with ``name``, ``init`` and ``step``.

        Optional attributes ``preconditioner``, ``adaptation_option`` and ``diffusion_gain`` are taken too.

        Raises
        ------
        ValueError
            When one of ``name``, ``init``, ``step`` is missing.
        """
        missing = [a for a in ("name", "init", "step") if not hasattr(module, a)]
        if missing:
            raise ValueError(f"a custom sampler must define {', '.join(missing)}; got {module!r}")
        return cls(
            name=module.name,
            init=module.init,
            step=module.step,
            preconditioner=getattr(module, "preconditioner", None),
            adaptation_option=getattr(module, "adaptation_option", None),
            diffusion_gain=getattr(module, "diffusion_gain", None),
        )

    def bind(self, options: Mapping[str, Any] | None = None, *, num_burnin: int = 0) -> BoundKernel:
        """Fix the hyperparameters: defaults filled in, unknown names refused.

        Parameters
        ----------
        options : mapping, optional
            Hyperparameters to override (``sampler_options`` of the estimators).
        num_burnin : int
            Burn-in steps of the run; ends adaptation there (see ``adaptation_option``).

        Raises
        ------
        ValueError
            For an option the kernel does not have (with the ones it has), or a required one missing.
        """
        given = dict(options or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise ValueError(
                f"sampler {self.name!r} has no option {', '.join(map(repr, unknown))}; its options "
                f"(with defaults) are: {known}"
            )
        resolved = {**self.options, **given}
        if self.adaptation_option and num_burnin > 0 and resolved.get(self.adaptation_option) is None:
            resolved[self.adaptation_option] = int(num_burnin)
        missing = sorted(k for k, v in resolved.items() if v is inspect.Parameter.empty)
        if missing:
            raise ValueError(f"sampler {self.name!r} needs sampler_options {missing}")
        return BoundKernel(self, MappingProxyType(resolved))


@dataclass(frozen=True)
class BoundKernel:
    """A :class:`Kernel` with its hyperparameters fixed; what the chain driver runs.

    Attributes
    ----------
    kernel : Kernel
    options : mapping
        Every hyperparameter, defaults included (recorded in results' settings).
    """

    kernel: Kernel
    options: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The kernel's registered name."""
        return self.kernel.name

    def init(self, position: Tensor) -> Any:
        """Start chains at ``position``."""
        return self.kernel.init(position)

    def step(
        self, state: Any, loss_grad: Tensor, target: Any, generator: torch.Generator | None, step_size: float
    ) -> Any:
        """One step of size ``step_size`` with the bound hyperparameters."""
        return self.kernel.step(state, loss_grad, target, generator, step_size=step_size, **self.options)

    def gradient_energy(self, state: Any, loss_grad: Tensor) -> Tensor:
        r""":math:`\sum_i G_i g_i^2` per chain (:math:`G = 1` without a preconditioner), shape ``(chains,)``.

        Recorded by the driver for the bias indicator (:func:`slt.tuning.bias_indicator`).
        """
        if self.kernel.preconditioner is None:
            return loss_grad.square().sum(-1)
        return (self.preconditioner(state) * loss_grad.square()).sum(-1)

    def preconditioner(self, state: Any) -> Tensor:
        """The kernel's diagonal preconditioner at ``state`` (ones without one)."""
        if self.kernel.preconditioner is None:
            return torch.ones_like(state.position)
        fn = self.kernel.preconditioner
        accepted = inspect.signature(fn).parameters
        return fn(state, **{k: v for k, v in self.options.items() if k in accepted})

    def largest_preconditioner(self) -> float:
        """The largest diagonal preconditioner the kernel applies (1 without one)."""
        if self.kernel.preconditioner is None:
            return 1.0
        return float(self.preconditioner(self.kernel.init(torch.zeros(1))).max())

    def diffusion_gain(self) -> float:
        r"""SGLD-equivalent simulated time per :math:`\varepsilon` of this kernel (see :class:`Kernel`)."""
        fn = self.kernel.diffusion_gain
        if fn is None:
            return 1.0
        accepted = inspect.signature(fn).parameters
        return float(fn(**{k: v for k, v in self.options.items() if k in accepted}))

    def settings(self) -> dict[str, Any]:
        """The options as plain values, for a result's settings."""
        return dict(self.options)
