"""The predicted biases the automatic step rests on."""

import math

import pytest

from slt.tuning import minibatch_bias, thermostat_minibatch_bias


def test_a_thermostat_weighs_minibatch_noise_by_its_gain_and_only_where_directions_differ():
    # SGNHT's one thermostat heats the stiff directions only as far as they hold more of the noise than
    # the average coordinate: half of d stiff (λ̂ = d/4) leaves half of the gain-weighted bias
    b, share, gain = 0.04, 0.5, 200.0
    assert thermostat_minibatch_bias(b, share, gain, 25.0, 100) == pytest.approx(
        gain * minibatch_bias(b, share) * 0.5
    )
    # a regular model (2λ̂ = d): every coordinate is stiff and the thermostat's average is theirs; the
    # factor is floored at a quarter, since a step far too large inflates λ̂ past d/2 itself
    floor = gain * minibatch_bias(b, share) * 0.25
    assert thermostat_minibatch_bias(b, share, gain, 50.0, 100) == pytest.approx(floor)
    assert thermostat_minibatch_bias(b, share, gain, 74.0, 100) == pytest.approx(floor)
    assert thermostat_minibatch_bias(b, 0.0, gain, 25.0, 100) == 0.0  # full batches
    assert math.isnan(thermostat_minibatch_bias(b, math.nan, gain, 25.0, 100))
    assert math.isnan(thermostat_minibatch_bias(b, share, gain, -1.0, 100))
