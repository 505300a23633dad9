"""The potline without gRPC: oracle against the batched simulator, commands, faults, noise (its settings:
test_config.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from plant.config import COMMANDS, PlantConfig
from plant.domain import Fault
from plant.excitation import Exogenous, constant
from plant.params import DEFAULT_PARAMS, DomainLimits
from plant.physics import algebraic, feed_controllers
from plant.potline import (
    CellFaulted,
    CurrentProfile,
    InvalidCommand,
    Potline,
    UnknownCell,
)
from plant.signals import U, X
from plant.simulator import MeasurementNoise, simulate

# The potline steps with numpy; simulate() runs the compiled C engine where a compiler is found. Two
# implementations: numpy's SIMD exp/pow and the C library's differ in the last bit on some CPUs (AMD vs Intel),
# and 120-300 RK4 steps carry that on, so they agree to rtol 1e-12, not bit for bit.
RTOL = 1e-12


def test_constant_profile_matches_simulator():
    line = Potline(3, seed=11)
    x0 = line.states
    assert line.step(120) == 120
    expected = simulate(x0, constant(3, 120))
    np.testing.assert_allclose(line.states, expected.x[:, -1], rtol=RTOL, atol=0)
    for snap in line.snapshots():
        np.testing.assert_allclose(snap.u, expected.u[snap.cell, -1], rtol=RTOL, atol=0)
        np.testing.assert_array_equal(snap.y, snap.x)  # no noise: the measurement is the state
        assert snap.step == 120 and snap.time_s == 1200.0


def test_aprbs_profile_has_the_spec_levels_and_holds():
    profile = CurrentProfile("aprbs", np.random.default_rng(1))
    currents = np.array([profile.next() for _ in range(20_000)])
    assert np.all((currents >= 118_000.0) & (currents <= 155_000.0))
    # piecewise constant: each level is held 100-1100 steps (the last run may be cut short)
    change = np.flatnonzero(np.diff(currents)) + 1
    runs = np.diff(change)
    assert len(runs) >= 10 and np.all((runs >= 100) & (runs <= 1100)) and 100 <= change[0] <= 1100
    assert 500 < runs.mean() < 700  # uniform 100-1100: mean 600


def test_aprbs_potline_matches_simulator():
    n = 300
    line = Potline(2, seed=5, current_profile="aprbs")
    x0 = line.states
    currents = []
    for _ in range(n):
        currents.append(line.current)
        line.step()
    exo = Exogenous(np.tile(currents, (2, 1)), np.full((2, n), 0.05), np.zeros((2, n)), np.zeros((2, n)))
    np.testing.assert_allclose(line.states, simulate(x0, exo).x[:, -1], rtol=RTOL, atol=0)
    assert currents[0] != 140_000.0 and len(set(currents)) <= 2  # a drawn level, held (>= 100 steps each)


def test_current_profile_rejects_unknown_names():
    with pytest.raises(ValueError, match="aprbs"):
        CurrentProfile("sine", np.random.default_rng(0))


def test_deterministic_under_a_seed():
    a, b, c = (Potline(2, seed=s, noise=MeasurementNoise(), current_profile="aprbs") for s in (3, 3, 4))
    for line in (a, b, c):
        line.step(30)
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.snapshot(1).y, b.snapshot(1).y)
    assert not np.array_equal(a.states, c.states)


def test_manual_alumina_feed_is_applied_and_closes_the_mass_balance():
    line = Potline(2, seed=2)
    before = line.states
    line.set_commands([(0, "alumina_feed", 2.0)])
    line.step()
    snap = line.snapshot(0)
    assert snap.u[U.FEED_AL2O3] == 2.0
    assert snap.manual[0] == 2.0 and np.isnan(snap.manual[1:]).all()
    # dx1 = u0 - k3 u1 is constant over the step, so RK4 integrates it exactly
    gain = snap.x[X.M_AL2O3] - before[0, X.M_AL2O3]
    assert gain == pytest.approx((2.0 - DEFAULT_PARAMS.k3 * 140_000.0) * 10.0, rel=1e-9)
    # the other cell stays automatic: its feed is the controller's decision
    auto, _, _ = feed_controllers(before[1], 10.0)
    assert line.snapshot(1).u[U.FEED_AL2O3] == auto


def test_handing_back_and_acd_command():
    line = Potline(1, seed=2, acd=0.05)
    line.set_commands([(0, "acd", 0.045), (0, "alf3_feed", 0.5)])
    line.step()
    assert line.snapshot(0).u[U.ACD] == 0.045 and line.snapshot(0).u[U.FEED_ALF3] == 0.5
    line.set_commands([(0, "acd", float("nan")), (0, "alf3_feed", float("nan"))])
    x = line.states
    line.step()
    snap = line.snapshot(0)
    assert snap.u[U.ACD] == 0.05
    assert snap.u[U.FEED_ALF3] == feed_controllers(x[0], 10.0)[1]
    assert np.isnan(snap.manual).all()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("alumina_feed", 22.5, ["alumina_feed", "22.5", "[0, 22]"]),
        ("alf3_feed", -0.1, ["alf3_feed", "-0.1", "[0, 10]"]),
        ("acd", 0.039, ["acd", "0.039", "[0.04, 0.06]"]),
        ("acd", float("inf"), ["acd", "inf", "finite"]),
        ("tapping", 1.0, ["tapping", "alumina_feed"]),
    ],
)
def test_bad_commands_name_field_value_and_bounds(field, value, words):
    line = Potline(2, seed=0)
    with pytest.raises(InvalidCommand) as err:
        line.set_commands([(1, field, value)])
    for w in words:
        assert w in str(err.value)


def test_commands_are_atomic_and_cells_checked():
    line = Potline(2, seed=0)
    with pytest.raises(InvalidCommand):
        line.set_commands([(0, "alumina_feed", 1.0), (1, "acd", 0.1)])
    assert np.isnan(line.manual).all()  # the good first command was not applied either
    with pytest.raises(UnknownCell, match="cell 2"):
        line.set_commands([(2, "acd", 0.05)])
    with pytest.raises(UnknownCell):
        line.snapshot(-1)


def test_bounds_table_matches_control_spec():
    bounds = {c.field: (c.low, c.high, c.unit) for c in COMMANDS}
    assert bounds == {"alumina_feed": (0.0, 22.0, "kg/s"), "alf3_feed": (0.0, 10.0, "kg/s"), "acd": (0.04, 0.06, "m")}


def test_a_fault_is_latched_the_state_held_and_never_nan():
    line = Potline(2, seed=7)
    line.set_commands([(0, "alumina_feed", 22.0)])  # 220 kg of alumina per step: leaves 1-8 % within a few steps
    line.step(10)
    snap = line.snapshot(0)
    assert snap.fault is Fault.ALUMINA_OUT_OF_RANGE
    assert 0 <= snap.fault_step < 10 and "alumina" in snap.fault_text
    held = snap.x.copy()
    line.step(5)
    np.testing.assert_array_equal(line.snapshot(0).x, held)
    assert line.snapshot(0).step == 15
    pct = 100 * held[X.M_AL2O3] / (held[X.M_AL2O3] + held[X.M_ALF3] + held[X.M_CRYOLITE])
    assert pct <= 8.0  # the held state is the last valid one
    other = line.snapshot(1)
    assert other.fault is Fault.NONE and other.fault_step == -1
    for s in line.snapshots():
        assert np.isfinite(s.x).all() and np.isfinite(s.u).all() and np.isfinite(list(s.outputs.values())).all()
    with pytest.raises(CellFaulted, match="cell 0"):
        line.set_commands([(0, "alumina_feed", float("nan"))])


def test_min_ledge_mass_from_config_faults_thin_ledges():
    cfg = PlantConfig(n_cells=6, seed=1, port=0, min_ledge_mass=3300.0)
    line = Potline.from_config(cfg)
    thin = line.states[:, X.M_LEDGE] < 3300.0
    assert thin.any() and not thin.all()  # the seed gives both kinds
    line.step()
    faults = line.faults
    assert np.all(faults[thin] == Fault.LEDGE_MELTED)
    assert np.all(faults[~thin] == Fault.NONE)
    assert "3300" in line.snapshot(int(np.flatnonzero(thin)[0])).fault_text


def test_measurement_noise_on_bath_temperature_only():
    line = Potline(200, seed=3, noise=MeasurementNoise())
    line.step()
    y = np.array([s.y for s in line.snapshots()])
    x = line.states
    diff = y - x  # (200, 8)
    assert np.all(diff[:, [0, 1, 2, 3, 4, 6, 7]] == 0.0)
    assert 1.5 < diff[:, X.T_BATH].std() < 2.5
    snap = line.snapshot(0)
    assert snap.outputs["superheat"] == pytest.approx(float(algebraic(snap.y, snap.u).superheat), rel=1e-12)


def test_given_initial_states_are_validated():
    x0 = Potline(2, seed=0).states
    assert np.array_equal(Potline(2, seed=9, x0=x0).states, x0)
    with pytest.raises(ValueError, match=r"\(3, 8\)"):
        Potline(3, seed=0, x0=x0)
    bad = x0.copy()
    bad[1, X.M_LEDGE] = 100.0
    with pytest.raises(ValueError, match=r"x0\[1\].*ledge"):
        Potline(2, seed=0, x0=bad, limits=DomainLimits())


def test_step_is_thread_safe():
    a, b = Potline(2, seed=4), Potline(2, seed=4)
    threads = [threading.Thread(target=lambda: [a.step() for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.step(100)
    assert a.step_index == 100
    np.testing.assert_array_equal(a.states, b.states)
