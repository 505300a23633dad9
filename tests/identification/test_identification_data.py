"""Data pipeline: samples stay inside trajectories, stop at faults; normalisation round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from identification.data import Normalization, fit_normalization, make_samples
from plant.simulator import Trajectories


def _toy() -> Trajectories:
    x = np.arange(2 * 4 * 8, dtype=float).reshape(2, 4, 8)  # (N=2, T+1=4, 8)
    x[1] *= 3.0
    u = np.ones((2, 3, 5))
    return Trajectories(x, u, np.array([-1, 1]), np.zeros(2, dtype=np.int8), None, 10.0)


def test_samples_stay_inside_trajectories_and_stop_at_faults():
    tr = _toy()
    s = make_samples(tr)
    # Trajectory 0: 3 steps; trajectory 1 faulted at step 1: only step 0 is valid.
    assert len(s) == 4
    np.testing.assert_array_equal(s.trajectory, [0, 0, 0, 1])
    np.testing.assert_array_equal(s.x[3], tr.x[1, 0])
    np.testing.assert_allclose(s.dxdt[0], (tr.x[0, 1] - tr.x[0, 0]) / 10.0)
    np.testing.assert_allclose(s.dxdt[3], (tr.x[1, 1] - tr.x[1, 0]) / 10.0)
    # No sample pairs the end of trajectory 0 with the start of trajectory 1.
    boundary = (tr.x[1, 0] - tr.x[0, 3]) / 10.0
    assert not np.any(np.all(np.isclose(s.dxdt, boundary), axis=1))


def test_measured_needs_measurements():
    with pytest.raises(ValueError, match="no measurements"):
        make_samples(_toy(), measured=True)


def test_normalization_round_trip_and_validation():
    s = make_samples(_toy())
    norm = fit_normalization(s, 10.0)
    z = norm.features(s.x, s.u)
    np.testing.assert_allclose(z[:, :8].mean(axis=0), 0.0, atol=1e-12)
    assert np.all(norm.feature_std[8:] == 1.0)  # constant inputs: std replaced by 1, no division by zero
    again = Normalization.from_dict(norm.as_dict())
    np.testing.assert_array_equal(again.feature_mean, norm.feature_mean)
    assert again.dt == 10.0
    with pytest.raises(ValueError, match="target_std must be positive"):
        Normalization(norm.feature_mean, norm.feature_std, norm.target_mean, -norm.target_std, 10.0)
    with pytest.raises(ValueError, match="exactly the keys"):
        Normalization.from_dict({"feature_mean": []})
