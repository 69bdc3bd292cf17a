"""SG-MCMC kernels as pure ``init``/``step`` functions over flat parameter vectors.

=================  ============================================  ==========================
name               kernel                                        extra settings (defaults)
=================  ============================================  ==========================
``"sgld"``         :mod:`slt.samplers.sgld`                      none
``"rmsprop_sgld"`` :mod:`slt.samplers.rmsprop_sgld`              ``alpha=0.99, delta=0.1``
``"sgnht"``        :mod:`slt.samplers.sgnht`                     ``diffusion=0.01``
=================  ============================================  ==========================
"""

from __future__ import annotations

from types import ModuleType

from slt.samplers import rmsprop_sgld, sgld, sgnht
from slt.samplers.base import LocalPosterior, potential_grad

__all__ = ["LocalPosterior", "potential_grad", "get_kernel", "KERNELS", "sgld", "rmsprop_sgld", "sgnht"]

KERNELS: dict[str, ModuleType] = {k.name: k for k in (sgld, rmsprop_sgld, sgnht)}


def get_kernel(name: str | ModuleType) -> ModuleType:
    """Look up a kernel module by name (``"sgld"``, ``"rmsprop_sgld"``, ``"sgnht"``).

    A module (or any object) with ``name``, ``init`` and ``step`` attributes is returned as is, so a
    custom kernel can be passed wherever a sampler name is accepted.
    """
    if not isinstance(name, str):
        missing = [a for a in ("name", "init", "step") if not hasattr(name, a)]
        if missing:
            raise ValueError(f"a custom sampler must define {', '.join(missing)}; got {name!r}")
        return name
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(map(repr, KERNELS))}") from None
