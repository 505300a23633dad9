"""The batched simulator: mass bookkeeping, determinism, batching, the validity guard, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from plant import DEFAULT_PARAMS, Fault, MeasurementNoise, X, aprbs, constant, sample_initial_states, simulate
from plant.excitation import Exogenous, oper
from plant.params import DomainLimits


@pytest.fixture(scope="module")
def aprbs_run():
    rng = np.random.default_rng(11)
    x0 = sample_initial_states(rng, 4)
    exo = aprbs(rng, 4, 1500)
    return x0, exo, simulate(x0, exo, engine="numpy")


def test_mass_bookkeeping_against_integrated_inputs(aprbs_run):
    """Alumina, AlF3 and metal are linear in the inputs: RK4 with a zero-order hold integrates them exactly."""
    _, _, tr = aprbs_run
    p, dt = DEFAULT_PARAMS, tr.dt
    u = tr.u  # (B, T, 5)
    expected = {
        X.M_AL2O3: dt * np.sum(u[..., 0] - p.k3 * u[..., 1], axis=1),
        X.M_ALF3: dt * np.sum(u[..., 2] - p.k4 * u[..., 0], axis=1),
        X.M_METAL: dt * np.sum(p.k6 * u[..., 1] - u[..., 3], axis=1),
    }
    for i, change in expected.items():
        got = tr.x[:, -1, i] - tr.x[:, 0, i]
        np.testing.assert_allclose(got, change, rtol=1e-9, atol=1e-7, err_msg=f"state {i}")
    # Total bath + ledge mass changes only by feeds (cryolite k5 u0, alumina, AlF3) and consumption.
    total = tr.x[..., [0, 1, 2, 3]].sum(axis=-1)
    feeds = dt * np.sum(u[..., 0] * (1 + p.k5 - p.k4) + u[..., 2] - p.k3 * u[..., 1], axis=1)
    np.testing.assert_allclose(total[:, -1] - total[:, 0], feeds, rtol=1e-9, atol=1e-6)
    # The excitation really fed something: impulses and controllers acted.
    assert np.all(u[..., 0].max(axis=1) > 10) and np.any(u[..., 3] > 0)


def test_same_seed_same_data_bit_for_bit(aprbs_run):
    x0, exo, tr = aprbs_run
    rng = np.random.default_rng(11)
    x0b, exob = sample_initial_states(rng, 4), aprbs(rng, 4, 1500)
    np.testing.assert_array_equal(x0, x0b)
    np.testing.assert_array_equal(exo.current, exob.current)
    trb = simulate(x0b, exob, engine="numpy")
    np.testing.assert_array_equal(tr.x, trb.x)
    np.testing.assert_array_equal(tr.u, trb.u)
    other = simulate(*_seeded(12, 4, 1500), engine="numpy")
    assert not np.array_equal(other.x, tr.x)


def _seeded(seed, n, t):
    rng = np.random.default_rng(seed)
    return sample_initial_states(rng, n), aprbs(rng, n, t)


def test_batched_equals_unbatched(aprbs_run):
    x0, exo, tr = aprbs_run
    for b in (0, 3):
        one = Exogenous(
            exo.current[b : b + 1], exo.acd[b : b + 1], exo.alumina_extra[b : b + 1], exo.alf3_extra[b : b + 1]
        )
        single = simulate(x0[b], one, engine="numpy")
        np.testing.assert_allclose(single.x[0], tr.x[b], rtol=1e-13)
        np.testing.assert_allclose(single.u[0], tr.u[b], rtol=1e-13)


def test_aprbs_excitation_follows_the_spec():
    exo = aprbs(np.random.default_rng(5), 3, 5000)
    assert np.all((exo.current >= 118_000) & (exo.current <= 155_000))
    assert np.all((exo.acd >= 0.043) & (exo.acd <= 0.057))
    for b in range(3):
        changes = np.flatnonzero(np.diff(exo.current[b])) + 1
        holds = np.diff(np.concatenate([[0], changes]))
        assert np.all((holds >= 100) & (holds <= 1100)), holds
        k = np.flatnonzero(exo.alumina_extra[b])
        assert len(k) >= 2 and np.all((np.diff(k) >= 500) & (np.diff(k) <= 2000))
        assert np.all((exo.alumina_extra[b][k] >= 1) & (exo.alumina_extra[b][k] <= 20))
        kf = np.flatnonzero(exo.alf3_extra[b])
        assert np.all((np.diff(kf) >= 1000) & (np.diff(kf) <= 3000))
    op = oper(1, 300)
    assert op.current[0, 0] == 140_000 and op.acd[0, 0] == pytest.approx(0.055)


def test_initial_states_follow_the_spec():
    x0 = sample_initial_states(np.random.default_rng(0), 500)
    bath = x0[:, 1] + x0[:, 2] + x0[:, 3]
    pa, pf = 100 * x0[:, 1] / bath, 100 * x0[:, 2] / bath
    np.testing.assert_allclose(pa, np.round(pa), atol=1e-9)  # whole percentages, as in the original study
    assert set(np.round(pa).astype(int)) == {2, 3, 4, 5} and set(np.round(pf).astype(int)) == {9, 10, 11, 12, 13}
    for i, (lo, hi) in {0: (2060, 4460), 3: (11500, 16000), 4: (9750, 10000), 5: (960, 990), 7: (555, 610)}.items():
        assert lo <= x0[:, i].min() and x0[:, i].max() <= hi


def test_ledge_melting_is_a_fault_not_nan():
    """155 kA with a 0.06 m ACD melts the ledge (the spec's example, from a thin and warm ledge to be quick)."""
    x0 = np.array([1000.0, 488.37, 1790.7, 14000.0, 9900.0, 985.0, 900.0, 750.0])
    exo = constant(1, 2000, current=155_000, acd=0.06)
    tr = simulate(x0, exo, engine="numpy")
    assert tr.fault_code[0] == Fault.LEDGE_MELTED
    k = tr.fault_step[0]
    assert 0 < k < 2000
    assert np.all(np.isfinite(tr.x)) and np.all(np.isfinite(tr.u))
    assert tr.x[0, k, 0] >= 500.0  # the last valid state ...
    np.testing.assert_array_equal(tr.x[0, k:], np.broadcast_to(tr.x[0, k], tr.x[0, k:].shape))  # ... is held
    # Without the guard the same run leaves the physical domain (negative or non-finite ledge).
    no_guard = DomainLimits(min_ledge_mass=-np.inf, alumina_pct=(-np.inf, np.inf), alf3_pct=(-np.inf, np.inf))
    raw = simulate(x0, exo, limits=no_guard, engine="numpy")
    assert raw.fault_code[0] == Fault.NON_FINITE and raw.fault_step[0] > k
    assert np.all(np.isfinite(raw.x))


def test_measurement_noise_is_seeded_and_on_bath_temperature_only(aprbs_run):
    x0, exo, _ = aprbs_run
    a = simulate(x0, exo, noise=MeasurementNoise(), rng=np.random.default_rng(1), engine="numpy")
    b = simulate(x0, exo, noise=MeasurementNoise(), rng=np.random.default_rng(1), engine="numpy")
    np.testing.assert_array_equal(a.y, b.y)
    err = a.y - a.x
    assert np.std(err[..., X.T_BATH]) == pytest.approx(2.0, rel=0.05)
    np.testing.assert_array_equal(np.delete(err, X.T_BATH, axis=-1), 0.0)


@pytest.mark.parametrize(
    ("x0", "match"),
    [
        (np.zeros(7), r"shape \(B, 8\)"),
        (np.full(8, np.nan), "non-finite"),
        (np.array([100.0, 488.0, 1790.0, 14000.0, 9900.0, 975.0, 820.0, 580.0]), "ledge"),
    ],
)
def test_bad_initial_state_is_refused(x0, match):
    with pytest.raises(ValueError, match=match):
        simulate(x0, constant(1, 10), engine="numpy")


def test_bad_arguments_are_refused():
    x0 = sample_initial_states(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="2 trajectories but the excitation has 1"):
        simulate(x0, constant(1, 10), engine="numpy")
    with pytest.raises(ValueError, match="must be one of"):
        simulate(x0, constant(2, 10), engine="warp-drive")
    with pytest.raises(ValueError, match="needs an rng"):
        simulate(x0, constant(2, 10), noise=MeasurementNoise(), engine="numpy")
    with pytest.raises(ValueError, match="dt"):
        simulate(x0, constant(2, 10), dt=-1.0, engine="numpy")
    with pytest.raises(ValueError, match=r"acd must have shape \(B, T\) = \(2, 3\)"):
        Exogenous(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"acd holds non-finite"):
        Exogenous(np.ones((2, 3)), np.full((2, 3), np.nan), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="n_steps"):
        constant(2, 0)
    with pytest.raises(ValueError, match="MeasurementNoise"):
        MeasurementNoise(std=(1.0,) * 7)
