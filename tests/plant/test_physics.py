"""The cell's equations against the spec's test vectors, for numpy and for CasADi (relative 1e-9)."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from plant import physics
from plant.excitation import constant
from plant.params import CellParams
from plant.simulator import simulate

RTOL = 1e-9

ALGEBRAIC_KEYS = {
    "liquidus_C": "liquidus",
    "conductivity": "conductivity",
    "bubble_coverage": "bubble_coverage",
    "bubble_thickness": "bubble_thickness",
    "bubble_voltage_V": "bubble_voltage",
    "cell_voltage_V": "cell_voltage",
}


def assert_rel(got, expected, rtol=RTOL, what=""):
    got = np.asarray(got, dtype=float).ravel()
    expected = np.asarray(expected, dtype=float).ravel()
    scale = np.maximum(np.abs(expected), 1e-12)  # a zero reference is compared absolutely at 1e-12 * rtol
    err = np.abs(got - expected) / scale
    assert np.all(err <= rtol), f"{what}: worst relative error {err.max():.3e} > {rtol:g}\n{got}\n{expected}"


def casadi_functions():
    x, u = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    a = physics.algebraic(x, u)
    outs = [physics.rhs(x, u), physics.rk4_step(x, u, 10.0)] + [getattr(a, k) for k in ALGEBRAIC_KEYS.values()]
    sx = ca.Function("sx", [x, u], outs)
    xm, um = ca.MX.sym("x", 8), ca.MX.sym("u", 5)
    mx = ca.Function("mx", [xm, um], [physics.rhs(xm, um), physics.rk4_step(xm, um, 10.0)])
    return sx, mx


def test_vectors_numpy(plant_vectors):
    for i, p in enumerate(plant_vectors["points"]):
        x, u = np.array(p["x"]), np.array(p["u"])
        assert_rel(physics.rhs(x, u), p["dxdt"], what=f"point {i} dxdt")
        assert_rel(physics.rk4_step(x, u, 10.0), p["x_next_rk4_dt10"], what=f"point {i} rk4")
        a = physics.algebraic(x, u)
        for key, attr in ALGEBRAIC_KEYS.items():
            assert_rel(getattr(a, attr), p[key], what=f"point {i} {key}")
        assert_rel(a.power, p["u"][1] * p["cell_voltage_V"], what=f"point {i} power")
        assert_rel(a.superheat, p["x"][5] - p["liquidus_C"], what=f"point {i} superheat")


def test_vectors_casadi_sx_and_mx(plant_vectors):
    sx, mx = casadi_functions()
    for i, p in enumerate(plant_vectors["points"]):
        outs = sx(p["x"], p["u"])
        assert_rel(outs[0], p["dxdt"], what=f"SX point {i} dxdt")
        assert_rel(outs[1], p["x_next_rk4_dt10"], what=f"SX point {i} rk4")
        for out, key in zip(outs[2:], ALGEBRAIC_KEYS, strict=True):
            assert_rel(out, p[key], what=f"SX point {i} {key}")
        d, xn = mx(p["x"], p["u"])
        assert_rel(d, p["dxdt"], what=f"MX point {i} dxdt")
        assert_rel(xn, p["x_next_rk4_dt10"], what=f"MX point {i} rk4")


def test_closed_loop_vector(plant_vectors):
    cl = plant_vectors["closed_loop"]
    exo = constant(1, cl["steps"], current=cl["current"], acd=cl["acd"])
    traj = simulate(np.array(cl["x0"]), exo, dt=cl["dt"], engine="numpy")
    assert traj.fault_code[0] == 0
    assert_rel(traj.x[0, -1], cl["x_final"], what="closed loop after 1000 steps")


def test_batched_equals_unbatched(plant_vectors):
    xs = np.array([p["x"] for p in plant_vectors["points"]])  # (3, 8)
    us = np.array([p["u"] for p in plant_vectors["points"]])  # (3, 5)
    batched = physics.rk4_step(xs, us, 10.0)
    nested = physics.rhs(np.stack([xs, xs[::-1]]), np.stack([us, us[::-1]]))  # (2, 3, 8)
    for i in range(3):
        np.testing.assert_allclose(batched[i], physics.rk4_step(xs[i], us[i], 10.0), rtol=1e-14)
        np.testing.assert_allclose(nested[0, i], physics.rhs(xs[i], us[i]), rtol=1e-14)
        np.testing.assert_allclose(nested[1, 2 - i], physics.rhs(xs[i], us[i]), rtol=1e-14)


def test_feed_controllers_numpy_equals_casadi():
    rng = np.random.default_rng(3)
    x = ca.SX.sym("x", 8)
    f = ca.Function("f", [x], list(physics.feed_controllers(x, 10.0)))
    bath = rng.uniform(13000, 20000, 200)
    states = np.zeros((200, 8))
    states[:, 1] = rng.uniform(0.015, 0.03, 200) * bath
    states[:, 2] = rng.uniform(0.09, 0.12, 200) * bath
    states[:, 3] = bath - states[:, 1] - states[:, 2]
    states[:, 4] = rng.uniform(9980, 10050, 200)
    feed_a, feed_f, tap = physics.feed_controllers(states, 10.0)
    for k in range(200):
        got = [float(v) for v in f(states[k])]
        np.testing.assert_allclose(got, [feed_a[k], feed_f[k], tap[k]], rtol=1e-15, atol=0)
    # The dead zones of the spec: nothing below 14, 2 and 2 kg/s; caps of 22, 8 and 9 kg/s.
    for v, floor, cap in ((feed_a, 14.0, 22.0), (feed_f, 2.0, 8.0), (tap, 2.0, 9.0)):
        assert np.all((v == 0) | ((v >= floor) & (v <= cap)))
        assert np.any(v == 0) and np.any(v > 0)


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="8 signals"):
        physics.rhs(np.zeros(7), np.zeros(5))
    with pytest.raises(ValueError, match="5 signals"):
        physics.rhs(np.ones(8), np.ones(4))
    with pytest.raises(ValueError, match=r"\(8, 1\)"):
        physics.rhs(ca.SX.sym("x", 9), ca.SX.sym("u", 5))


def test_liquidus_override_is_the_wrong_physics_model(plant_vectors):
    p = plant_vectors["points"][0]
    wrong = CellParams(liquidus_override=968.0)
    a = physics.algebraic(np.array(p["x"]), np.array(p["u"]), wrong)
    assert a.liquidus == 968.0
    d_true = physics.rhs(np.array(p["x"]), np.array(p["u"]))
    d_wrong = physics.rhs(np.array(p["x"]), np.array(p["u"]), wrong)
    np.testing.assert_array_equal(d_wrong[[1, 2, 4]], d_true[[1, 2, 4]])  # mass balances do not use T_liq
    assert abs(d_wrong[0] - d_true[0]) > 1e-3  # ledge dynamics do


def test_params_derive_constants_and_refuse_nonsense():
    p = CellParams()
    assert p.k1 == pytest.approx(2 * 2.5 * 17.92 / 119495, rel=1e-15)
    assert p.k7 == pytest.approx(p.k2 * 1881, rel=1e-15)
    assert p.k14 == pytest.approx(0.1 / 13, rel=1e-15)
    drifted = p.with_changes(h_bath_ledge=1440.0)
    assert drifted.k2 == pytest.approx(1.2 * p.k2, rel=1e-14) and drifted.k10 == pytest.approx(1 / 1440)
    with pytest.raises(ValueError, match="h_bath_ledge"):
        CellParams(h_bath_ledge=float("nan"))
