"""Every kernel samples a Gaussian target correctly at a small step, and is pure."""

import pytest
import torch

import slt
from slt.samplers import KERNELS, LocalPosterior, get_kernel
from tests.conftest import Quadratic, quadratic_loss


@pytest.mark.parametrize(("sampler", "step"), [("sgld", 2e-4), ("rmsprop_sgld", 2e-5), ("sgnht", 2e-5)])
def test_kernel_recovers_half_the_dimension_on_a_quadratic(sampler, step):
    d, n_beta = 6, 200.0
    expected = (d / 2) * (2 * n_beta) / (2 * n_beta + 1.0)
    result = slt.estimate_llc(
        Quadratic(d),
        torch.zeros(10, 1),
        loss_fn=quadratic_loss,
        n_beta=n_beta,
        localization=1.0,
        step_size=step,
        sampler=sampler,
        num_chains=16,
        num_draws=3000,
        num_burnin=1000,
        progress=False,
    )
    assert result.mean == pytest.approx(expected, rel=0.06)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_steps_do_not_mutate_their_inputs(name):
    kernel = get_kernel(name)
    center = torch.randn(7)
    target = LocalPosterior(3.0, 1.0, center)
    state = kernel.init(center)
    snapshot = [t.clone() if isinstance(t, torch.Tensor) else t for t in state]
    grad = torch.randn(7)
    grad_copy = grad.clone()
    new = kernel.step(state, grad, target, torch.Generator().manual_seed(1), step_size=1e-2)
    for old, kept in zip(state, snapshot):
        if isinstance(old, torch.Tensor):
            assert torch.equal(old, kept) or (torch.isnan(old).all() and torch.isnan(kept).all())
    assert torch.equal(grad, grad_copy)
    assert not torch.equal(new.position, state.position)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'hmc'.*'sgld'"):
        get_kernel("hmc")


def test_custom_kernel_objects_must_define_init_and_step():
    class Incomplete:
        name = "mine"

    with pytest.raises(ValueError, match="must define init, step"):
        get_kernel(Incomplete())


@pytest.mark.parametrize(("sampler", "options"), [("sgld", {}), ("sgnht", {"diffusion": 0.05})])
def test_free_diffusion_grows_by_the_kernels_diffusion_gain(sampler, options):
    # with no force a coordinate's variance grows by ε per step under SGLD and by 2ε/A under SGNHT (its
    # velocity has variance ε and decorrelates over 1/A steps): the gain that sizes SGNHT's floor on the
    # simulated time and weighs its minibatch noise
    d, steps, eps = 4000, 2000, 1e-3
    bound = get_kernel(sampler).bind(options)
    free = LocalPosterior(0.0, 0.0, torch.zeros(d, dtype=torch.float64))
    state, generator, zero = bound.init(free.center), torch.Generator().manual_seed(0), torch.zeros(d)
    for _ in range(steps):
        state = bound.step(state, zero.double(), free, generator, eps)
    expected = bound.diffusion_gain() * eps * steps
    assert bound.diffusion_gain() == (2 / 0.05 if sampler == "sgnht" else 1.0)
    assert float(state.position.var()) == pytest.approx(expected, rel=0.1)
