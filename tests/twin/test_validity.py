"""The validity checks' pieces against plain numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest

from identification.data import Envelope, fit_envelope, make_samples
from plant.datasets import generate
from twin.serving.validity import _over_steps, input_warnings


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 361])
def test_the_tree_reduction_over_steps_equals_numpys(steps: int) -> None:
    rng = np.random.default_rng(steps)
    a = rng.normal(size=(5, steps, 8))
    a[2, steps // 2, 3] = np.nan
    for op, ref in ((np.minimum, np.min), (np.maximum, np.max)):
        got, want = _over_steps(a, op), ref(a, axis=1)
        assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(_over_steps(a, np.minimum)[2, 3])


def test_the_envelope_of_a_fit_is_the_range_of_its_training_samples() -> None:
    data, _ = generate(3, 2, 50, progress=False)
    samples = make_samples(data)
    env = fit_envelope(samples)
    assert np.array_equal(env.x_low, samples.x.min(0)) and np.array_equal(env.u_high, samples.u.max(0))
    wide = env.union(Envelope(env.x_low - 1, env.x_high, env.u_low, env.u_high + 2))
    assert np.array_equal(wide.x_low, env.x_low - 1) and np.array_equal(wide.u_high, env.u_high + 2)
    with pytest.raises(ValueError, match="must not exceed"):
        Envelope(env.x_high, env.x_low - 1, env.u_low, env.u_high)


def test_the_margin_decides_what_counts_as_outside() -> None:
    env = Envelope(np.zeros(8), np.ones(8), np.zeros(5), np.ones(5))
    x0 = np.full((2, 8), 0.5)
    x0[1, 4] = 1.05  # 0.05 widths above
    u = np.full((2, 3, 5), 0.5)
    assert [w.signal for w in input_warnings(x0, u, env, margin=0.0)] == ["m_metal"]
    assert input_warnings(x0, u, env, margin=0.1) == []
    (w,) = input_warnings(x0, u, env, margin=0.01)
    assert (w.array, w.scenario, w.count) == ("x0", 1, 1) and w.excess == pytest.approx(0.05)
