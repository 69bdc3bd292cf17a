"""vmap's batching-rule warnings: caught, reported once, the rest passed through."""

import warnings

import pytest

from slt.sampling.vmap import BATCHING_WARNING, quiet_vmap_call, suppressed_batching_warnings


def noisy(value):
    for op in ("aten::foo", "aten::foo", "aten::bar_backward"):
        message = f"{BATCHING_WARNING} for {op}. Please file us an issue on GitHub"
        warnings.warn(message, UserWarning, stacklevel=2)
    return value


def test_batching_warnings_are_caught_and_named_once_each():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, ops = quiet_vmap_call(noisy, 3)
    assert result == 3 and ops == ["aten::foo", "aten::bar_backward"]
    assert quiet_vmap_call(lambda: 1) == (1, [])


def test_other_warnings_still_reach_the_caller():
    def other():
        warnings.warn("something else", RuntimeWarning, stacklevel=2)
        return noisy(0)

    with pytest.warns(RuntimeWarning, match="something else"):
        _, ops = quiet_vmap_call(other)
    assert ops == ["aten::foo", "aten::bar_backward"]


def test_suppression_silences_only_batching_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with suppressed_batching_warnings():
            noisy(0)
            with pytest.raises(UserWarning, match="unrelated"):
                warnings.warn("unrelated", UserWarning, stacklevel=2)
