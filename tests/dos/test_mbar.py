"""MBAR free energies against a case with a closed form: L = ||w||^2 with the Gaussian localizer."""

import numpy as np
import pytest

from slt.dos.mbar import log_weights, overlap_matrix, solve_free_energies


def quadratic_samples(temperatures, d=4, draws=4000, seed=0):
    """Exact draws of t = ||w||^2 under exp(-x t - ||w||^2 / 2): t ~ Gamma(d/2, scale 2/(2x + 1))."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.gamma(d / 2, 2 / (2 * x + 1), size=draws) for x in temperatures])


def exact_free_energies(temperatures, d=4):
    z = (2 * np.asarray(temperatures) + 1) ** (-d / 2)
    return -np.log(z / z[0])


def test_binless_free_energies_match_the_closed_form():
    x = np.array([0.0, 1.0, 3.0, 10.0, 30.0])
    t = quadratic_samples(x)
    counts = np.kron(np.eye(len(x)), np.ones(t.shape[1]))  # each sample its own bin
    f = solve_free_energies(t.ravel(), counts, x)
    assert f[0] == 0.0
    assert f == pytest.approx(exact_free_energies(x), abs=0.05)


def test_fine_bins_agree_with_binless_and_warm_starts_converge_to_the_same_point():
    x = np.array([1.0, 3.0, 10.0, 30.0])
    t = quadratic_samples(x, seed=1)
    counts = np.kron(np.eye(len(x)), np.ones(t.shape[1]))
    exact = solve_free_energies(t.ravel(), counts, x)
    edges = np.geomspace(t.min(), t.max() * (1 + 1e-12), 1500)
    index = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    binned = np.stack([np.bincount(i, minlength=len(edges) - 1) for i in index])
    sums = np.bincount(index.ravel(), weights=t.ravel(), minlength=len(edges) - 1)
    means = np.where(binned.sum(0) > 0, sums / np.maximum(binned.sum(0), 1), edges[:-1])
    f = solve_free_energies(means, binned, x)
    assert f == pytest.approx(exact, abs=2e-3)
    assert solve_free_energies(means, binned, x, initial=f + 3.0) == pytest.approx(f, abs=1e-8)


def test_weights_reweight_to_another_temperature():
    x = np.array([1.0, 3.0, 10.0])
    t = quadratic_samples(x, seed=2)
    counts = np.kron(np.eye(len(x)), np.ones(t.shape[1]))
    flat = t.ravel()
    f = solve_free_energies(flat, counts, x)
    w = np.exp(log_weights(f, counts.sum(1), x, flat) - 5.0 * flat)  # reweight to x = 5, not sampled
    mean_t = np.sum(w * flat) / np.sum(w)
    assert mean_t == pytest.approx(4.0 / (2 * 5.0 + 1), rel=0.03)  # E[t] = (d/2) * 2/(2x + 1), d = 4


def test_overlap_matrix_rows_sum_to_one_and_falls_with_distance():
    x = np.array([1.0, 2.0, 100.0])
    t = quadratic_samples(x, seed=3)
    counts = np.kron(np.eye(len(x)), np.ones(t.shape[1]))
    f = solve_free_energies(t.ravel(), counts, x)
    overlap = overlap_matrix(f, t.ravel(), counts, x)
    assert np.allclose(overlap.sum(1), 1.0)
    assert overlap[0, 1] > 0.2 and overlap[1, 2] < 0.03


def test_a_rung_without_samples_is_an_error():
    with pytest.raises(ValueError, match="every rung needs at least one finite sample"):
        solve_free_energies(np.array([0.1, 0.2]), np.array([[3.0, 1.0], [0.0, 0.0]]), np.array([1.0, 2.0]))
