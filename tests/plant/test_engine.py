"""The compiled engine against the numpy engine (the oracle), the spec's closed-loop vector, faults, the cache."""

from __future__ import annotations

import warnings

import casadi as ca
import numpy as np
import pytest

from plant import (
    DEFAULT_LIMITS,
    DEFAULT_PARAMS,
    Fault,
    aprbs,
    check_domain,
    constant,
    sample_initial_states,
    simulate,
)
from plant.engine import (
    CompiledEngineError,
    CompilerUnavailableWarning,
    build_library,
    compiled_available,
    simulate_compiled,
    step_function,
)
from plant.excitation import Exogenous
from plant.params import DomainLimits
from plant.simulator import ENGINES

RTOL = 1e-10  # compiled vs numpy over at most 600 steps. Two implementations: CasADi simplifies constants in its
# graph and the C library's exp and pow may differ from numpy's SIMD ones in the last bit; the feed controllers
# amplify that over time. Measured on 6 x 100 aprbs trajectories (AMD EPYC): at most 8.5e-14 (states) and 8e-12
# (inputs) relative within 600 steps, 2.1e-12 and 6.2e-11 within 1500, 7.8e-7 and 2.7e-6 within 5000.
LONG_RTOL = 1e-5  # the same over 5000 steps (the slow test): above the 7.8e-7 and 2.7e-6 measured

needs_compiler = pytest.mark.skipif(not compiled_available(), reason="no working C compiler for the compiled engine")


def assert_same_trajectories(got, ref, rtol=RTOL):
    np.testing.assert_allclose(got.x, ref.x, rtol=rtol, atol=0, err_msg="states")
    np.testing.assert_allclose(got.u, ref.u, rtol=rtol, atol=0, err_msg="inputs")
    np.testing.assert_array_equal(got.fault_step, ref.fault_step, err_msg="fault_step")
    np.testing.assert_array_equal(got.fault_code, ref.fault_code, err_msg="fault_code")


@pytest.fixture(scope="module")
def aprbs_case():
    rng = np.random.default_rng(21)
    x0 = sample_initial_states(rng, 8)
    exo = aprbs(rng, 8, 600)
    return x0, exo, simulate(x0, exo, engine="numpy")


@needs_compiler
def test_equals_numpy_on_aprbs(aprbs_case):
    x0, exo, ref = aprbs_case
    got = simulate(x0, exo, engine="compiled")
    assert_same_trajectories(got, ref)
    assert got.x.shape == (8, 601, 8) and got.u.shape == (8, 600, 5)
    # The data is not trivial: the excitation and the feed controllers acted.
    assert np.ptp(got.u[..., 1]) > 1000 and np.any(got.u[..., 0] > 10) and np.ptp(got.x[..., 0]) > 10


@needs_compiler
@pytest.mark.slow
def test_long_trajectories_stay_close_to_numpy():
    """20 trajectories x 5000 steps: the engines drift apart only by amplified rounding (see LONG_RTOL)."""
    rng = np.random.default_rng(1)
    x0, exo = sample_initial_states(rng, 20), aprbs(rng, 20, 5000)
    ref = simulate(x0, exo, engine="numpy")
    got = simulate(x0, exo, engine="compiled")
    assert_same_trajectories(got, ref, rtol=LONG_RTOL)
    assert not np.array_equal(got.x, np.broadcast_to(got.x[:, :1], got.x.shape))  # the cells moved


@needs_compiler
def test_deterministic_and_independent_of_threads(aprbs_case):
    x0, exo, _ = aprbs_case
    one = simulate_compiled(x0, exo, 10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, n_threads=1)
    again = simulate_compiled(x0, exo, 10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, n_threads=1)
    split = simulate_compiled(x0, exo, 10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, n_threads=3)
    for a, b, c in zip(one, again, split, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # A single trajectory simulated alone is the same as inside the batch.
    alone = Exogenous(exo.current[5:6], exo.acd[5:6], exo.alumina_extra[5:6], exo.alf3_extra[5:6])
    np.testing.assert_array_equal(simulate(x0[5], alone, engine="compiled").x[0], one[0][5])


@needs_compiler
def test_non_contiguous_excitation(aprbs_case):
    _, exo, ref = aprbs_case
    part = Exogenous(
        exo.current[:, 100:400], exo.acd[:, 100:400], exo.alumina_extra[:, 100:400], exo.alf3_extra[:, 100:400]
    )
    got = simulate(ref.x[:, 100], part, engine="compiled")
    np.testing.assert_allclose(got.x, ref.x[:, 100:401], rtol=RTOL, atol=0)


def _fault_batch():
    """Five cells, each meant to end differently within 300 steps (with a ledge limit of 2000 kg)."""
    t = 300
    x0 = np.tile([3000.0, 488.372, 1790.698, 14000.0, 9900.0, 975.0, 820.0, 580.0], (5, 1))  # (5, 8)
    x0[1, [0, 5]] = 2600.0, 990.0  # thin ledge, hot bath ...
    cur, acd = np.full((5, t), 140_000.0), np.full((5, t), 0.05)
    cur[1], acd[1] = 155_000.0, 0.06  # ... at high current and a long ACD: the ledge melts
    extra_a, extra_f = np.zeros((5, t)), np.zeros((5, t))
    extra_a[2, 0] = 1000.0  # 10 t of alumina in the first step: alumina out of range at step 0
    extra_f[3, 120] = 100.0  # 1 t of AlF3 at step 120
    extra_a[4, 50] = -2000.0  # removes more alumina than there is: the bath mass turns negative, NaN
    return x0, Exogenous(cur, acd, extra_a, extra_f), DomainLimits(min_ledge_mass=2000.0)


@needs_compiler
def test_faults_equal_numpy_and_hold():
    x0, exo, limits = _fault_batch()
    ref = simulate(x0, exo, limits=limits, engine="numpy")
    got = simulate(x0, exo, limits=limits, engine="compiled")
    expected = [Fault.NONE, Fault.LEDGE_MELTED, Fault.ALUMINA_OUT_OF_RANGE, Fault.ALF3_OUT_OF_RANGE, Fault.NON_FINITE]
    assert got.fault_code.tolist() == [int(f) for f in expected]
    assert got.fault_step[0] == -1 and got.fault_step[2] == 0 and got.fault_step[3] == 120 and got.fault_step[4] == 50
    assert 0 < got.fault_step[1] < 200
    assert_same_trajectories(got, ref)
    assert np.all(np.isfinite(got.x)) and np.all(np.isfinite(got.u))
    for b in range(1, 5):
        k = got.fault_step[b]
        held_x = got.x[b, k + 1 :]  # (T - k, 8): the last valid state x[k], repeated
        np.testing.assert_array_equal(held_x, np.broadcast_to(got.x[b, k], held_x.shape))
        held_u = got.u[b, k:]  # the input of the faulting step, repeated
        np.testing.assert_array_equal(held_u, np.broadcast_to(got.u[b, k], held_u.shape))
    assert np.all(check_domain(got.x[:, -1], limits) == 0)  # what is held is a valid state
    assert got.x[1, -1, 0] < 2100.0  # the ledge did melt down to the limit


@needs_compiler
def test_closed_loop_vector(plant_vectors):
    cl = plant_vectors["closed_loop"]
    exo = constant(1, cl["steps"], current=cl["current"], acd=cl["acd"])
    tr = simulate(np.array(cl["x0"]), exo, dt=cl["dt"], engine="compiled")
    assert tr.fault_code[0] == 0
    expected = np.array(cl["x_final"])
    err = np.abs(tr.x[0, -1] - expected) / np.abs(expected)
    assert np.all(err <= 1e-9), f"worst relative error {err.max():.3e}"


def test_step_function_masks_nan_and_leaves_casadi_options_alone():
    before = ca.GlobalOptions.getSimplificationOnTheFly()
    f = step_function(10.0, DEFAULT_PARAMS, DEFAULT_LIMITS)
    assert ca.GlobalOptions.getSimplificationOnTheFly() == before  # a process-wide switch: never touched
    x = [3000.0, 488.372, 1790.698, 14000.0, 9900.0, 975.0, 820.0, 580.0]
    x_next, fault, u = f(x, 0.0, [0.0] * 5, [140_000.0, 0.05, -2000.0, 0.0])  # the step's result is NaN
    assert int(fault) == Fault.NON_FINITE
    np.testing.assert_array_equal(np.asarray(x_next).ravel(), x)
    x_next, fault, u = f(x, float(Fault.LEDGE_MELTED), [1.0, 2.0, 3.0, 4.0, 5.0], [140_000.0, 0.05, 0.0, 0.0])
    assert int(fault) == Fault.LEDGE_MELTED  # a latched fault holds state and input
    np.testing.assert_array_equal(np.asarray(x_next).ravel(), x)
    np.testing.assert_array_equal(np.asarray(u).ravel(), [1.0, 2.0, 3.0, 4.0, 5.0])


@needs_compiler
def test_cache_builds_once(tmp_path):
    path, compiled_now = build_library(10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, directory=tmp_path)
    assert compiled_now and path.is_file() and path.parent == tmp_path
    again, compiled_again = build_library(10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, directory=tmp_path)
    assert again == path and not compiled_again
    other, _ = build_library(5.0, DEFAULT_PARAMS, DEFAULT_LIMITS, directory=tmp_path)
    assert other != path  # another sample time is another library
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])  # no temp files left


def test_auto_falls_back_to_numpy_without_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    limits = DomainLimits(min_ledge_mass=123.0)  # a combination not built yet in this process
    x0 = np.array([[3000.0, 488.372, 1790.698, 14000.0, 9900.0, 975.0, 820.0, 580.0]])
    exo = constant(1, 20)
    with pytest.raises(CompiledEngineError, match="no C compiler"):
        simulate(x0, exo, limits=limits, engine="compiled")
    with pytest.warns(CompilerUnavailableWarning, match="numpy"):
        tr = simulate(x0, exo, limits=limits, engine="auto")
    ref = simulate(x0, exo, limits=limits, engine="numpy")
    np.testing.assert_array_equal(tr.x, ref.x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulate(x0, exo, limits=limits, engine="auto")  # warned once only
    assert "auto" in ENGINES and "compiled" in ENGINES


@needs_compiler
def test_rejects_mismatched_shapes(aprbs_case):
    x0, exo, _ = aprbs_case
    with pytest.raises(ValueError, match="x0 must have shape"):
        simulate_compiled(x0[:3], exo, 10.0, DEFAULT_PARAMS, DEFAULT_LIMITS)
    with pytest.raises(ValueError, match="n_threads"):
        simulate_compiled(x0, exo, 10.0, DEFAULT_PARAMS, DEFAULT_LIMITS, n_threads=0)
