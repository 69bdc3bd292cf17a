import itertools

import pytest
import torch

from slt import oracles


def test_multilayer_formula_reduces_to_two_layer_formula_for_all_widths_up_to_6():
    checked = 0
    for m, h, n in itertools.product(range(1, 7), repeat=3):
        for r in range(0, min(m, h, n) + 1):
            assert oracles.dln_lambda([m, h, n], r) == pytest.approx(
                oracles.rrr_lambda(m, h, n, r), abs=1e-12
            )
            lam, mult = oracles.dln_lambda([m, h, n], r)
            assert (lam, mult)[1] == oracles.rrr_lambda(m, h, n, r)[1]
            checked += 1
    assert checked > 400


@pytest.mark.parametrize(
    ("widths", "rank", "expected"),
    [([10, 10, 10], 0, 37.5), ([10, 20, 10], 2, 50.0), ([100, 100, 100, 100], 10, 3650.0)],
)
def test_published_deep_linear_examples(widths, rank, expected):
    assert oracles.dln_lambda(widths, rank)[0] == pytest.approx(expected)


def test_reduced_rank_regression_values_used_by_the_estimator_tests():
    assert oracles.rrr_lambda(10, 5, 10, 1) == (25.5, 1)
    assert oracles.rrr_lambda(10, 5, 10, 2) == (29.0, 2)


def test_regular_case_is_half_the_effective_dimension():
    # full-rank two-layer network: d minus the GL(H) symmetry, halved
    assert oracles.rrr_lambda(10, 5, 10, 5)[0] == (100 - 25) / 2


def test_normal_crossing_and_tanh_values():
    assert oracles.normal_crossing_lambda([1, 2]) == (0.25, 1)
    assert oracles.normal_crossing_lambda([1, 1]) == (0.5, 2)
    assert oracles.normal_crossing_lambda([1, 1, 1]) == (0.5, 3)
    assert oracles.normal_crossing_lambda([1, 2], prior_powers=[1, 0]) == (0.25, 1)
    assert [oracles.tanh_lambda(h) for h in range(1, 5)] == pytest.approx([0.5, 2 / 3, 5 / 6, 1.0])


def test_bad_widths_and_ranks_are_rejected():
    with pytest.raises(ValueError, match="rank must lie"):
        oracles.dln_lambda([3, 2, 3], 3)
    with pytest.raises(ValueError, match="at least an input and an output"):
        oracles.dln_lambda([3], 0)
    with pytest.raises(ValueError, match="widths must be positive"):
        oracles.rrr_lambda(0, 2, 3, 0)


def test_deep_linear_network_factory_has_every_layer_at_the_requested_rank():
    net = oracles.deep_linear_network([6, 5, 4, 6], rank=2, seed=3)
    product = torch.eye(6, dtype=torch.float64)
    for layer in net:
        assert torch.linalg.matrix_rank(layer.weight.double(), rtol=1e-5) == 2
        product = layer.weight.double() @ product
    assert torch.linalg.matrix_rank(product, rtol=1e-5) == 2
    x, y = oracles.linear_regression_data(net, 50, noise=0.0)
    assert torch.allclose(net(x), y)


def test_normal_crossing_model_and_tanh_network_start_at_the_true_parameter():
    model = oracles.NormalCrossing([1, 2])
    x, _ = oracles.regression_data(10)
    assert torch.all(model(x) == 0)
    model = oracles.NormalCrossing([1, 2], init=[2.0, 3.0])
    assert torch.allclose(model(torch.ones(1)), torch.tensor([18.0]))
    net = oracles.tanh_network(3)
    assert torch.all(net(x) == 0)
