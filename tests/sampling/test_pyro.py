import numpy as np
import pytest
import torch
from pyro.infer import MCMC

import slt
from slt.sampling.pyro import SGLDKernel
from tests.conftest import Quadratic, quadratic_loss


@pytest.mark.filterwarnings("ignore:one chain:slt.warnings.ConvergenceWarning")  # one chain on purpose
def test_pyro_mcmc_drives_the_same_chain_as_the_native_driver():
    kwargs = dict(loss_fn=quadratic_loss, n_beta=50.0, localization=1.0, step_size=1e-3, seed=11)
    kernel = SGLDKernel(Quadratic(3), torch.zeros(8, 1), **kwargs)
    mcmc = MCMC(kernel, num_samples=400, warmup_steps=100, disable_progbar=True)
    mcmc.run()
    samples = mcmc.get_samples()
    assert samples["w"].shape == (400, 3) and samples["loss"].shape == (400,)
    native = slt.estimate_llc(
        Quadratic(3),
        torch.zeros(8, 1),
        num_chains=1,
        num_draws=400,
        num_burnin=100,
        chain_mode="sequential",
        progress=False,
        control_variate=False,
        **kwargs,
    )
    # identical kernel, generator and schedule: the very same losses
    np.testing.assert_allclose(samples["loss"].numpy(), native.loss_trace[0], rtol=1e-12)
    llc = kernel.n_beta * (samples["loss"].mean().item() - kernel.init_loss)
    assert llc == pytest.approx(native.mean, rel=1e-9)


def test_pyro_samples_have_the_stationary_variance_of_the_target():
    n_beta, gamma, eps, d = 50.0, 1.0, 4e-3, 3
    kernel = SGLDKernel(
        Quadratic(d),
        torch.zeros(8, 1),
        loss_fn=quadratic_loss,
        n_beta=n_beta,
        localization=gamma,
        step_size=eps,
        seed=0,
    )
    mcmc = MCMC(kernel, num_samples=10000, warmup_steps=200, disable_progbar=True)
    mcmc.run()
    w = mcmc.get_samples()["w"]
    a = 2 * n_beta + gamma
    exact_var = 1 / a  # SGLD's Leimkuhler-Matthews noise: exact at any stable step (Euler: +11% here)
    assert w.mean(0).abs().max() < 0.02
    assert w.var(0).mean().item() == pytest.approx(exact_var, rel=0.05)
    assert mcmc.diagnostics()["w"]["n_eff"].min() > 500  # pyro computes it from the same draws
