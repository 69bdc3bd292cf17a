"""The SGLD kernel as a :class:`pyro.infer.mcmc.MCMCKernel`, for users of ``pyro.infer.MCMC``.

pyro's driver costs more per step than slt's own (it stores every parameter of every draw), so
:func:`slt.estimate_llc` does not use it; this adapter exists so that pyro pipelines can sample the
same localized tempered posterior with the same kernel::

    from pyro.infer import MCMC
    kernel = SGLDKernel(model, (X, y), loss_fn="mse", step_size=1e-4)
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=500)
    mcmc.run()
    llc = kernel.n_beta * (mcmc.get_samples()["loss"].mean() - kernel.init_loss)

Samples hold ``"w"`` (the flat sampled parameters after each step) and ``"loss"`` (the minibatch loss
at the position the step started from, exactly what slt's driver records as a draw).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from torch import Tensor, nn

from slt.samplers import Kernel, LocalPosterior, get_kernel
from slt.sampling.driver import PosteriorSampler, chain_seeds
from slt.sampling.flat import Mask
from slt.sampling.losses import LossFn, check_scalar

__all__ = ["PyroKernel", "SGLDKernel"]


class PyroKernel(MCMCKernel):
    """Any registered slt sampler (SGLD by default) driven by pyro's ``MCMC``.

    Parameters
    ----------
    model, data, loss_fn, batch_size, mask, device
        As in :func:`slt.estimate_llc`.
    step_size : float
        Step size of the kernel.
    n_beta : float, optional
        Inverse temperature times sample size (default ``n / log n``).
    localization : float
        Strength of the pull towards the trained weights.
    sampler : str or Kernel
        Any registered slt kernel (``"sgld"``, ``"rmsprop_sgld"``, ``"sgnht"``, or one registered with
        :func:`slt.samplers.register_kernel`).
    sampler_options : dict, optional
        The kernel's options (see :meth:`slt.samplers.Kernel.bind`).
    seed : int
        Seed; with the same seed the chain equals chain 0 of ``estimate_llc(..., chain_mode="sequential")``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        loss_fn: str | LossFn,
        step_size: float,
        n_beta: float | None = None,
        localization: float = 1.0,
        sampler: str | Kernel = "sgld",
        sampler_options: dict[str, Any] | None = None,
        batch_size: int | None = None,
        mask: Mask = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        from slt.sampling.settings import default_n_beta, validate_settings

        validate_settings(n_beta=n_beta, localization=localization, step_size=step_size)
        self.posterior = PosteriorSampler(
            model, data, loss_fn, batch_size=batch_size, mask=mask, device=device, seed=seed
        )
        self.kernel = get_kernel(sampler).bind(sampler_options)
        self.step_size = float(step_size)
        self.n_beta = float(n_beta) if n_beta is not None else default_n_beta(self.posterior.n)
        self.init_loss = self.posterior.init_loss
        self.target = LocalPosterior(
            self.n_beta, float(localization), self.posterior.center, self.posterior.flat_model.coordinate_mask
        )
        self.seed = seed
        self.transforms: dict[str, Any] = {}
        self._initial_params: dict[str, Tensor] | None = None
        self._state: Any = None

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Start a fresh chain at the trained weights."""
        self._generator = torch.Generator(device=self.posterior.device).manual_seed(
            chain_seeds(self.seed, 1)[0]
        )
        self._next_batch = self.posterior.data.stream(self._generator, self.posterior.batch_size)
        self._state = self.kernel.init(self.posterior.center)

    @property
    def initial_params(self) -> dict[str, Tensor]:
        """The trained weights as the flat vector ``"w"``, and the full-data loss there."""
        if self._initial_params is not None:
            return self._initial_params
        center = self.posterior.center
        return {"w": center.clone(), "loss": torch.tensor(self.init_loss, dtype=center.dtype)}

    @initial_params.setter
    def initial_params(self, params: dict[str, Tensor]) -> None:
        self._initial_params = params

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """One kernel step from ``params["w"]``."""
        fm = self.posterior.flat_model
        position = params["w"]
        if self._state is None or not torch.equal(self._state.position, position):
            self._state = (
                self._state._replace(position=position.clone())
                if self._state is not None
                else (self.kernel.init(position))
            )
        fm.load(self._state.position)
        loss, grad = fm.loss_and_grad(self._next_batch())
        loss = check_scalar(loss)
        self._state = self.kernel.step(self._state, grad, self.target, self._generator, self.step_size)
        return {"w": self._state.position.clone(), "loss": loss.detach().clone()}

    def logging(self) -> dict[str, Any]:
        """Nothing to report per step beyond the samples themselves."""
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """The settings of this kernel, reported by ``MCMC.diagnostics()``."""
        return {"step_size": self.step_size, "n_beta": self.n_beta, "sampler": self.kernel.name}


#: The adapter's first name, kept for existing code: it was SGLD-only once and now runs any kernel.
SGLDKernel = PyroKernel
