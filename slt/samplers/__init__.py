"""SG-MCMC kernels as pure ``init``/``step`` functions over flat parameter vectors, and their registry.

==================  ============================================  ===================================
name                kernel                                        options (defaults)
==================  ============================================  ===================================
``"sgld"``          :mod:`slt.samplers.sgld`                      ``leimkuhler_matthews=True``
``"rmsprop_sgld"``  :mod:`slt.samplers.rmsprop_sgld`              ``alpha=0.99, delta=0.1,
                                                                  adapt_steps=num_burnin``
``"sgnht"``         :mod:`slt.samplers.sgnht`                     ``diffusion=0.01``
==================  ============================================  ===================================

A new sampler is one module that defines ``init`` and ``step`` and one call of :func:`register_kernel`;
from then on every estimator, sweep and ``slt analyze --sampler`` accepts its name. The Metropolis-adjusted
kernel :mod:`slt.samplers.mala` and replica exchange (:mod:`slt.samplers.exchange`) serve the density
of states.
"""

from __future__ import annotations

from typing import Any

from slt.samplers import rmsprop_sgld, sgld, sgnht
from slt.samplers.base import LocalPosterior, potential_grad
from slt.samplers.kernel import BoundKernel, Kernel

__all__ = [
    "LocalPosterior",
    "potential_grad",
    "Kernel",
    "BoundKernel",
    "get_kernel",
    "register_kernel",
    "kernel_names",
    "KERNELS",
    "sgld",
    "rmsprop_sgld",
    "sgnht",
]

#: The registry: name to :class:`Kernel`. Read it through :func:`get_kernel` and :func:`kernel_names`.
KERNELS: dict[str, Kernel] = {k.kernel.name: k.kernel for k in (sgld, rmsprop_sgld, sgnht)}


def register_kernel(kernel: Kernel, *, replace: bool = False) -> Kernel:
    """Make ``kernel`` available by name everywhere slt takes a sampler.

    Parameters
    ----------
    kernel : Kernel
    replace : bool
        Allow replacing a kernel registered under the same name.

    Returns
    -------
    Kernel
        ``kernel``, so the call can sit at a module's end: ``kernel = register_kernel(Kernel(...))``.

    Raises
    ------
    TypeError
        When ``kernel`` is not a :class:`Kernel`.
    ValueError
        When the name is taken and ``replace`` is false.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"register_kernel takes a slt.samplers.Kernel, got {type(kernel).__name__}")
    if kernel.name in KERNELS and KERNELS[kernel.name] is not kernel and not replace:
        raise ValueError(f"a sampler named {kernel.name!r} is registered already; pass replace=True")
    KERNELS[kernel.name] = kernel
    return kernel


def kernel_names() -> tuple[str, ...]:
    """Names of the registered kernels."""
    return tuple(KERNELS)


def get_kernel(sampler: str | Kernel | Any) -> Kernel:
    """The :class:`Kernel` for a registered name, a kernel, or a module with ``name``/``init``/``step``.

    Raises
    ------
    ValueError
        For an unknown name (listing the registered ones) or an object that is not a kernel.
    """
    if isinstance(sampler, Kernel):
        return sampler
    if isinstance(sampler, BoundKernel):
        return sampler.kernel
    if isinstance(sampler, str):
        try:
            return KERNELS[sampler]
        except KeyError:
            names = ", ".join(map(repr, KERNELS))
            raise ValueError(
                f"unknown sampler {sampler!r}; choose one of {names} or register one with "
                "slt.samplers.register_kernel"
            ) from None
    return Kernel.from_module(sampler)
