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


def _brute_force(members: np.ndarray, mean: np.ndarray, box: tuple[np.ndarray, np.ndarray] | None) -> list:
    """Each scenario's validity from every member and step by the plant's guard (the oracle)."""
    from plant.domain import Fault, check_domain
    from plant.signals import STATES
    from twin.results import ScenarioValidity

    out = []
    for b in range(mean.shape[0]):
        found: dict = {}
        mb = check_domain(mean[b]) != 0
        if mb.any():
            k = int(np.argmax(mb))
            found.update(domain_exit_step=k, domain_reason=Fault(int(check_domain(mean[b, k]))).describe())
        if box is not None:
            with np.errstate(invalid="ignore"):
                outside = ~((mean[b] >= box[0]) & (mean[b] <= box[1]))  # (T, 8)
            if outside.any():
                k = int(np.argmax(outside.any(-1)))
                names = tuple(STATES[i].name for i in np.flatnonzero(outside[k]))
                found.update(envelope_exit_step=k, envelope_signals=names)
        bad = check_domain(members[:, b]) != 0  # (M, T)
        diverged = tuple(int(m) for m in np.flatnonzero(bad.any(1)))
        if diverged:
            found.update(diverged_members=diverged, first_divergence_step=min(int(np.argmax(bad[m])) for m in diverged))
        out.append(ScenarioValidity(**found))
    return out


def test_scenario_validity_from_exits_equals_the_bounds_and_the_brute_force() -> None:
    from identification.rollout import exits_of
    from plant.params import DomainLimits
    from twin.registry.served import NOMINAL_STATE
    from twin.serving.validity import envelope_box, scenario_validity

    rng = np.random.default_rng(3)
    scale = np.array([0.001, 0.001, 0.05, 0.2, 0.001, 0.1])[None, :, None, None]  # per scenario
    members = NOMINAL_STATE * (1 + scale * rng.normal(size=(5, 6, 30, 8)))  # (M, B, T, 8)
    members[2, 4, 12:, 1] = 5.0  # one member of scenario 4 runs out of alumina at step 12
    members[:, 1, 20:, 0] = 400.0  # every member of scenario 1 melts its ledge at step 20: the mean too
    members[3, 5, 7:] = np.nan  # a member of scenario 5 blows up at step 7
    mean, spread = members.mean(0), members.std(0)
    env = Envelope(NOMINAL_STATE * 0.9, NOMINAL_STATE * 1.1, np.zeros(5), np.ones(5))
    box = envelope_box(env, 0.1)
    assert box is envelope_box(env, 0.1)  # remembered: the same arrays for the same envelope and margin
    calls = []

    def rollout(idx: np.ndarray) -> np.ndarray:
        calls.append(idx.tolist())
        return members[:, idx]

    exits = exits_of(members, mean, box=box)
    fast = scenario_validity(mean, spread, 5, env, rollout, margin=0.1, exits=exits)
    assert calls == []  # the exits say it all: nothing is rolled out again
    bounds = scenario_validity(mean, spread, 5, env, rollout, margin=0.1)
    assert fast == bounds == _brute_force(members, mean, box)
    assert fast[0].ok and fast[1].domain_exit_step == 20 and "ledge" in fast[1].domain_reason
    assert fast[4].diverged_members == (2,) and fast[4].first_divergence_step == 12 and fast[4].domain_exit_step < 0
    assert 3 in fast[5].diverged_members and fast[5].first_divergence_step <= 7 and fast[5].domain_exit_step == 7
    assert any(v.envelope_exit_step > 0 for v in fast)
    # exits for another domain or box are not used: the bounds decide (and re-run the suspects)
    other = exits_of(members, mean, DomainLimits(min_ledge_mass=100.0), box)
    assert scenario_validity(mean, spread, 5, env, rollout, margin=0.1, exits=other) == bounds and calls
    calls.clear()
    no_box = exits_of(members, mean)
    assert scenario_validity(mean, spread, 5, env, rollout, margin=0.1, exits=no_box) == bounds and calls
    assert scenario_validity(mean, spread, 5, None, rollout, exits=no_box) == _brute_force(members, mean, None)


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_predict_validity_equals_the_bounds_and_the_brute_force(engine: str, precision: str) -> None:
    """The committed sparse model (with its training envelope) on scenarios that stay, leave the domain, leave
    the envelope, and have members that diverge."""
    from pathlib import Path

    from identification.modelfile import load_model
    from identification.rollout import compiled_rollout_available, make_rollout_engine
    from plant.signals import U, X
    from twin.registry import ServedModel
    from twin.registry.served import NOMINAL_INPUT, NOMINAL_STATE
    from twin.serving import predict
    from twin.serving.validity import envelope_box, scenario_validity

    if engine == "compiled" and not compiled_rollout_available():
        pytest.skip("no working C compiler")
    loaded = load_model(Path(__file__).resolve().parents[2] / "identification" / "pretrained" / "sparse-inputskip")
    eng = make_rollout_engine(loaded.surrogate, engine)
    served = ServedModel("cell", 1, loaded, eng, b"", b"")
    rng = np.random.default_rng(0)
    x0 = NOMINAL_STATE * (1 + rng.normal(0, 0.01, (8, 8)))
    x0[1, X.M_AL2O3] *= 0.4
    x0[2, X.M_AL2O3] *= 0.36  # about 1 % alumina: the mean and most members leave the domain
    x0[3, X.M_LEDGE] = 520.0
    u = np.broadcast_to(NOMINAL_INPUT, (8, 120, 5)).copy()
    u[5:7, :, U.CURRENT] = 170_000.0
    for b in (1, 3, 8):  # the post-pass after member quads, and the summary work items
        got = predict(served, x0[:b], u[:b], include_members=True, precision=precision)
        members = got.members
        assert members is not None and got.mean is not None and got.spread is not None
        box = envelope_box(loaded.surrogate.envelope, 0.1)
        want = _brute_force(members, got.mean, box)
        assert list(got.validity) == want
        x0_b, u_b = x0[:b], u[:b]

        def rollout(idx: np.ndarray, x0_b: np.ndarray = x0_b, u_b: np.ndarray = u_b) -> np.ndarray:
            return eng.simulate(x0_b[idx], u_b[idx], precision)

        bounds = scenario_validity(
            got.mean, got.spread, served.n_members, loaded.surrogate.envelope, rollout, margin=0.1
        )
        assert bounds == want
        lean = predict(served, x0[:b], u[:b], precision=precision)  # without the members: the same validity
        assert lean.validity == got.validity
    assert got.validity[0].ok and any(not v.ok for v in got.validity)
    assert got.validity[2].domain_exit_step > 0 and got.validity[2].diverged_members
    assert any(v.envelope_exit_step >= 0 and not v.diverged_members for v in got.validity)
