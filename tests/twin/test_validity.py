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


def test_the_compiled_scans_make_the_numpy_decisions() -> None:
    from plant.domain import check_domain
    from twin.registry.served import NOMINAL_STATE
    from twin.serving.validity import _scans, extremes, first_outside

    assert _scans(True) is not None, "a C compiler is on every machine here: the compiled scans must load"
    rng = np.random.default_rng(7)
    scale = np.where(np.arange(40) % 2 == 0, 0.01, 0.3)[:, None, None]  # odd rows wide: they leave the domain
    x = NOMINAL_STATE * (1 + scale * rng.normal(size=(40, 50, 8)))
    x[3, 10, 6] = np.nan
    x[5, 20, 7] = np.inf
    spread = np.abs(rng.normal(size=x.shape))
    spread[8, 4, 2] = np.nan
    for got, want in zip(extremes(x, spread, use_c=True), extremes(x, spread, use_c=False), strict=True):
        assert np.array_equal(got, want, equal_nan=True)
    lo, _, smax = extremes(x, spread)
    assert np.isnan(lo[3, 6]) and np.isnan(lo[5, 7]) and np.isnan(smax[8, 2]) and not np.isnan(lo[3, 5])
    fast, slow = first_outside(x, use_c=True), first_outside(x, use_c=False)
    assert np.array_equal(fast, slow) and (fast >= 0).any() and (fast == -1).any()
    bad = check_domain(x) != 0  # the oracle, step by step
    for i in range(40):
        assert fast[i] == (int(np.argmax(bad[i])) if bad[i].any() else -1)


def test_scenario_validity_from_the_bounds_equals_the_brute_force_over_members() -> None:
    from plant.domain import check_domain
    from twin.registry.served import NOMINAL_STATE
    from twin.serving.validity import scenario_validity

    rng = np.random.default_rng(3)
    scale = np.array([0.001, 0.001, 0.05, 0.2, 0.001, 0.1])[None, :, None, None]  # per scenario
    members = NOMINAL_STATE * (1 + scale * rng.normal(size=(5, 6, 30, 8)))  # (M, B, T, 8)
    members[2, 4, 12:, 1] = 5.0  # one member of scenario 4 runs out of alumina at step 12
    mean, spread = members.mean(0), members.std(0)
    calls = []

    def rollout(idx: np.ndarray) -> np.ndarray:
        calls.append(idx.tolist())
        return members[:, idx]

    variants = [
        scenario_validity(mean, spread, 5, None, rollout),
        scenario_validity(mean, spread, 5, None, rollout, use_c=False),
        scenario_validity(mean, spread, 5, None, rollout, members=members),
    ]
    assert variants[0] == variants[1] == variants[2]
    assert 0 not in calls[0] and 1 not in calls[0]  # tight scenarios are never rolled out again
    for b, v in enumerate(variants[0]):
        bad = check_domain(members[:, b]) != 0  # (M, T)
        diverged = tuple(int(m) for m in np.flatnonzero(bad.any(1)))
        assert v.diverged_members == diverged
        assert v.first_divergence_step == min((int(np.argmax(bad[m])) for m in diverged), default=-1)
        mb = check_domain(mean[b]) != 0
        assert v.domain_exit_step == (int(np.argmax(mb)) if mb.any() else -1)
    assert 2 in variants[0][4].diverged_members and variants[0][4].first_divergence_step <= 12
