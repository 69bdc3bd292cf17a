"""The contract every registered kernel keeps, checked on each (the toy kernel of the extension test too).

Pure steps; masked coordinates never move; a batch of chains steps exactly like the chains one by one;
options bound once and unknown ones refused; the update on a quadratic matches the kernel's equation.
"""

import math

import pytest
import torch

import tests.toy_plugins  # noqa: F401  (registers the toy kernel, so the contract covers it)
from slt.samplers import KERNELS, Kernel, LocalPosterior, get_kernel
from slt.samplers.kernel import kernel_options

NAMES = sorted(KERNELS)


def target(d: int, mask=None) -> LocalPosterior:
    center = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    return LocalPosterior(n_beta=50.0, localization=2.0, center=center, mask=mask)


def run(bound, position, tgt, generator, steps=5, step_size=1e-2):
    state = bound.init(position)
    for _ in range(steps):
        grad = 2 * state.position  # L(w) = ||w||^2
        state = bound.step(state, grad, tgt, generator, step_size)
    return state


@pytest.mark.parametrize("name", NAMES)
def test_steps_are_pure(name):
    bound = get_kernel(name).bind()
    tgt = target(5)
    state = bound.init(tgt.center + 0.1)
    before = [t.clone() if isinstance(t, torch.Tensor) else t for t in state]
    grad = torch.randn(5, dtype=torch.float64)
    grad_before, center_before = grad.clone(), tgt.center.clone()
    new = bound.step(state, grad, tgt, torch.Generator().manual_seed(0), 1e-2)
    for old, kept in zip(state, before):
        if isinstance(old, torch.Tensor):
            assert torch.equal(torch.nan_to_num(old), torch.nan_to_num(kept))
    assert torch.equal(grad, grad_before) and torch.equal(tgt.center, center_before)
    assert not torch.equal(new.position, state.position)


@pytest.mark.parametrize("name", NAMES)
def test_masked_coordinates_never_move(name):
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    tgt = target(5, mask)
    start = tgt.center + 0.3
    state = run(get_kernel(name).bind(), start, tgt, torch.Generator().manual_seed(0), steps=20)
    frozen = mask == 0
    assert torch.equal(state.position[frozen], start[frozen])
    assert not torch.equal(state.position[~frozen], start[~frozen])


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_chains_steps_like_the_chains_one_by_one(name):
    chains, d = 3, 4  # 12 normals: torch draws them in the same order as three draws of 4
    bound = get_kernel(name).bind()
    tgt = target(d)
    starts = tgt.center + 0.1 * torch.arange(1, chains + 1, dtype=torch.float64)[:, None]
    generator = torch.Generator().manual_seed(7)
    batch = bound.init(starts)
    singles = [bound.init(starts[c]) for c in range(chains)]
    for _ in range(4):
        batch = bound.step(batch, 2 * batch.position, tgt, generator, 1e-2)
    generator = torch.Generator().manual_seed(7)
    for _ in range(4):
        singles = [bound.step(s, 2 * s.position, tgt, generator, 1e-2) for s in singles]
    one_by_one = torch.stack([s.position for s in singles])
    torch.testing.assert_close(batch.position, one_by_one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_options_are_bound_once_and_unknown_ones_refused(name):
    kernel = get_kernel(name)
    assert dict(kernel.bind().options) == {k: v for k, v in kernel_options(kernel.step).items()} | (
        {} if kernel.adaptation_option is None else {kernel.adaptation_option: None}
    )
    with pytest.raises(ValueError, match=f"sampler '{name}' has no option 'no_such_option'"):
        kernel.bind({"no_such_option": 1})
    if kernel.adaptation_option:
        assert kernel.bind(num_burnin=30).options[kernel.adaptation_option] == 30
        given = kernel.bind({kernel.adaptation_option: 5}, num_burnin=30)
        assert given.options[kernel.adaptation_option] == 5


def noise_of_first_step(seed, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sgld_update_is_its_equation():
    """Two steps: the Leimkuhler-Matthews noise averages consecutive draws; the Euler step uses each once."""
    tgt, eps = target(4), 1e-2
    w = tgt.center + 0.2
    generator = torch.Generator().manual_seed(1)
    xi = torch.randn((2, 4), generator=generator, dtype=torch.float64)

    def drift(position):
        return tgt.n_beta * 2 * position + tgt.localization * (position - tgt.center)

    for averaged in (True, False):
        bound = get_kernel("sgld").bind({"leimkuhler_matthews": averaged})
        generator = torch.Generator().manual_seed(1)
        first = bound.step(bound.init(w), 2 * w, tgt, generator, eps)
        second = bound.step(first, 2 * first.position, tgt, generator, eps)
        if averaged:
            noise = (xi[0] / 2, (xi[0] + xi[1]) / 2)  # no draw before the first step: its partner is 0
        else:
            noise = (xi[0], xi[1])
        expected_first = w - eps / 2 * drift(w) + math.sqrt(eps) * noise[0]
        torch.testing.assert_close(first.position, expected_first)
        expected = expected_first - eps / 2 * drift(expected_first) + math.sqrt(eps) * noise[1]
        torch.testing.assert_close(second.position, expected)


def test_rmsprop_update_is_its_equation():
    tgt, eps, alpha, delta = target(4), 1e-2, 0.9, 0.2
    w = tgt.center + 0.2
    bound = get_kernel("rmsprop_sgld").bind({"alpha": alpha, "delta": delta})
    new = bound.step(bound.init(w), 2 * w, tgt, torch.Generator().manual_seed(1), eps)
    g = 2 * w
    v_hat = (1 - alpha) * g**2 / (1 - alpha)  # bias-corrected after one step
    precond = 1 / (v_hat.sqrt() + delta)
    drift = tgt.n_beta * g + tgt.localization * (w - tgt.center)
    expected = w - eps / 2 * precond * drift + (eps * precond).sqrt() * noise_of_first_step(1, 4)
    torch.testing.assert_close(new.position, expected)
    torch.testing.assert_close(bound.preconditioner(new), precond)


def test_sgnht_update_is_its_equation():
    tgt, eps, a = target(4), 1e-2, 0.05
    w = tgt.center + 0.2
    bound = get_kernel("sgnht").bind({"diffusion": a})
    new = bound.step(bound.init(w), 2 * w, tgt, torch.Generator().manual_seed(1), eps)
    force = tgt.n_beta * 2 * w + tgt.localization * (w - tgt.center)
    velocity = -eps * force + math.sqrt(2 * a * eps) * noise_of_first_step(1, 4)
    torch.testing.assert_close(new.velocity, velocity)
    torch.testing.assert_close(new.position, w + velocity)
    thermostat = torch.tensor(a + float(velocity.square().mean()) - eps, dtype=torch.float64)
    torch.testing.assert_close(new.thermostat, thermostat)


def test_a_kernel_needs_callables_and_a_step_size():
    with pytest.raises(TypeError, match="step must take a step_size keyword"):
        Kernel("bad", lambda w: w, lambda state, grad, target, generator: state)
    with pytest.raises(TypeError, match="init must be callable"):
        Kernel("bad", None, lambda state, grad, target, generator, *, step_size: state)
