"""The controller: the CasADi surrogate against the twin's prediction, the safety layer (injected solver
failures, clipping, watchdog), a model swap in the twin picked up by a running MPC, the oracle MPC against doing
nothing, and clear errors for bad settings (the closed loop through the services: tests/apps/test_runner.py).

Everything runs with CasADi's virtual machine (no JIT) on shrunken horizons, so each test takes seconds.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alutwin.cbuild import BuildError
from apps.runner import SystemConfig
from controller import mpc as mpc_module
from controller.closed_loop import DEFAULT_MODELS, OPERATING_MARGINS, Scenario, operating_initial_state, run_loop
from controller.config import MPCConfig, SafetyConfig
from controller.models import ModelMismatch, OracleModel, SurrogateModel, TwinModel, check_against_prediction
from controller.mpc import FEASIBLE_ITERATE, NMPC, Plan
from controller.plantlink import LocalPlant
from controller.problem import MANIPULATED, WINDOWS, CostWeights, controlled, mpc_power, violation
from controller.safety import SafeController, Watchdog, clip_inputs
from identification.export import to_casadi
from identification.modelfile import load_model
from plant.physics import algebraic
from plant.potline import Potline
from twin.client import TwinClient

SPARSE = DEFAULT_MODELS / "sparse-inputskip"
SMALL = MPCConfig(interval_steps=6, horizon=3, jit=False, max_wall_s=20.0)
LOW = np.array([m.low for m in MANIPULATED])
HIGH = np.array([m.high for m in MANIPULATED])


def _state(alumina_pct: float, alf3_pct: float = 11.0) -> np.ndarray:
    """A mid-range state with the given concentrations (percent of the bath)."""
    cryolite = 14_000.0
    a, f = alumina_pct / 100.0, alf3_pct / 100.0
    bath = cryolite / (1.0 - a - f)
    return np.array([3000.0, a * bath, f * bath, cryolite, 9900.0, 970.0, 820.0, 580.0])


@pytest.fixture(scope="module")
def twin(start_twin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinClient]:
    """A twin on 127.0.0.1:0 whose model "cell" has the committed sparse-inputskip ensemble as champion."""
    with start_twin(tmp_path_factory.mktemp("store")) as (_, client):
        client.register("cell", SPARSE, set_alias="champion")
        yield client


# ---------------------------------------------------------------------------------------------------------------
# Models


def test_casadi_surrogate_equals_the_twins_prediction(twin):
    model = TwinModel(twin, "cell", watch=False)  # checks the mean step against Predict on construction
    assert model.version == 1 and model.describe()["check_max_rel_diff"] <= 1e-9
    member = TwinModel(twin, "cell", member=3, watch=False)  # a member's 3-step rollout against Predict

    def predict(x0, u):
        return twin.predict("cell", x0, u, include_members=True)

    rel = check_against_prediction(member.dynamics(), predict, member=3, horizon=5, n_states=3, seed=4)
    assert rel <= 1e-9

    class Shifted:  # the twin's answer with a 1e-6 relative error in one entry
        def __init__(self, p):
            self.mean = np.array(p.mean)
            self.mean[0, -1, 5] *= 1 + 1e-6
            self.members = p.members

    with pytest.raises(ModelMismatch, match="differs from the twin's prediction"):
        check_against_prediction(model.dynamics(), lambda x0, u: Shifted(predict(x0, u)), member=None)


def test_surrogate_model_bounds_the_acd_to_the_training_range():
    model = SurrogateModel.from_dir(SPARSE)
    lo, hi = model.input_bounds()["acd"]
    assert 0.0425 < lo < 0.0435 and 0.0565 < hi < 0.0575  # "aprbs" ACD levels were 0.043-0.057 m
    assert model.input_bounds()["feed_al2o3"] == (0.0, 0.06)
    x, u = _state(3.0), np.array([0.024, 140_000.0, 0.001, 0.006, 0.05])
    ref = load_model(SPARSE).surrogate.mean().derivative(x[None], u[None])[0]
    np.testing.assert_allclose(np.asarray(model.dynamics()(x, u)).ravel(), x + 10.0 * ref, rtol=1e-12)


def test_problem_cost_is_the_same_for_numpy_and_casadi():
    import casadi as ca

    x, u = _state(1.5, 12.5), np.array([0.03, 150_000.0, 0.0, 0.0, 0.045])
    values, power = controlled(x, u)
    assert power == pytest.approx(algebraic(x, u).power)
    assert float(violation(values[0], WINDOWS[0])) == pytest.approx(0.5)
    assert float(violation(values[1], WINDOWS[1])) == pytest.approx(0.5)
    sx, su = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    from controller.problem import cost_rate

    f = ca.Function("c", [sx, su], [cost_rate(sx, su, CostWeights())])
    assert float(f(x, u)) == pytest.approx(float(cost_rate(x, u, CostWeights())), rel=1e-12)


def test_mpc_power_equals_the_plant_inside_the_window_and_stays_finite_below_the_pole():
    import casadi as ca

    sx, su = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    f = ca.Function("p", [sx, su], [mpc_power(sx, su)])
    u = np.array([0.0, 140_000.0, 0.0, 0.0, 0.05])
    x = _state(3.0)
    assert float(f(x, u)) == pytest.approx(float(controlled(x, u)[1]), rel=1e-12)
    low = [float(f(_state(pa), u)) for pa in (2.3, 2.1, 1.5)]  # below 2.4 %: evaluated at 2.4 %
    assert low[0] == pytest.approx(low[1], rel=1e-9) == pytest.approx(low[2], rel=1e-9)
    assert low[0] > float(f(x, u)) > 0  # the voltage falls with alumina above the clamp
    past = algebraic(_state(2.15), u)  # the plant's correlation past its pole: coverage > 1, negative bubble drop
    assert past.bubble_coverage > 1 and past.bubble_voltage < 0


def test_operating_initial_state_is_seeded_and_inside_the_windows():
    u = np.array([0.0, 140_000.0, 0.0, 0.0, 0.05])
    states = [operating_initial_state(seed) for seed in range(8)]
    for x in states:
        values, _ = controlled(x, u)
        for value, window in zip(values, WINDOWS, strict=True):
            m = OPERATING_MARGINS[window.name]
            assert window.low + m <= value <= window.high - m
    assert len({x.tobytes() for x in states}) == 8  # different per seed
    np.testing.assert_array_equal(operating_initial_state(3), states[3])  # the same for the same seed
    np.testing.assert_array_equal(Scenario(hours=1.0, seed=3).potline().states[0], states[3])
    assert Scenario(hours=1.0, seed=3, initial="wide").initial_state() is None
    with pytest.raises(ValueError, match=re.escape("Scenario.initial must be one of")):
        Scenario(hours=1.0, seed=3, initial="random")


def test_a_capped_solve_is_used_only_when_its_iterate_is_feasible():
    x0, v_prev = _state(2.6), np.array([0.024, 0.0005, 0.05])
    strict = NMPC(OracleModel(), MPCConfig(interval_steps=6, horizon=3, jit=False, max_iter=1, accept_capped=False))
    plan = strict.solve(x0, 140_000.0, v_prev)
    assert not plan.success and plan.status == "Maximum_Iterations_Exceeded" and not plan.capped
    mpc = NMPC(OracleModel(), MPCConfig(interval_steps=6, horizon=3, jit=False, max_iter=8))
    plan = mpc.solve(x0, 140_000.0, v_prev)
    if plan.capped:  # the iterate was feasible and no worse than the first: used
        assert plan.success and plan.status.endswith(FEASIBLE_ITERATE)
    elif not plan.success:  # an infeasible iterate is a failure (the safety layer takes over)
        assert plan.status == "Maximum_Iterations_Exceeded" and np.isnan(plan.objective)
    sol = mpc._initial_guess(x0, v_prev, 140_000.0)
    g = np.zeros(mpc._lbg.size)
    assert mpc._violation(sol, g) == 0.0
    feasible = {"iterations": {"obj": [10.0, 9.0], "inf_pr": [0.0, 0.0]}}
    worse = {"iterations": {"obj": [10.0, 11.0], "inf_pr": [0.0, 0.0]}}
    assert mpc._usable_iterate(sol, g, feasible) and not mpc._usable_iterate(sol, g, worse)
    g_bad = g.copy()
    g_bad[0] = 1e-3  # a dynamics defect
    assert not mpc._usable_iterate(sol, g_bad, feasible)


def test_a_capped_unused_iterate_warm_starts_the_next_solve():
    """With ``continue_capped`` the next solve goes on from a capped solve's iterate (shifted), and so needs fewer
    iterations than a cold start; without it, it starts cold."""
    x0, v_prev = _state(2.6), np.array([0.024, 0.0005, 0.05])
    base = dataclasses.replace(SMALL, max_iter=3, accept_capped=False)
    on, off = NMPC(OracleModel(), base), NMPC(OracleModel(), dataclasses.replace(base, continue_capped=False))
    first = on.solve(x0, 140_000.0, v_prev)
    assert not first.success and first.status == "Maximum_Iterations_Exceeded"
    assert on._guess is not None and on._lam is not None
    off.solve(x0, 140_000.0, v_prev)
    assert off._guess is None and off._lam is None
    free = dataclasses.replace(SMALL, max_iter=100)
    cold = NMPC(OracleModel(), free).solve(x0, 140_000.0, v_prev)
    warm_mpc = NMPC(OracleModel(), free)  # the capped one's iterate, in a problem without the 3-iteration cap
    warm_mpc._guess, warm_mpc._lam = on._guess, on._lam
    warm = warm_mpc.solve(x0, 140_000.0, v_prev)
    assert cold.success and warm.success and warm.iterations < cold.iterations, (warm.iterations, cold.iterations)


def test_nmpcs_on_the_same_dynamics_share_one_built_problem():
    """Two loads of one model under one configuration build once; another configuration or model builds its own;
    the shared problem solves the same as a fresh build (same code: bit-equal)."""
    first = NMPC(SurrogateModel.from_dir(SPARSE), SMALL)
    second = NMPC(SurrogateModel.from_dir(SPARSE), SMALL)  # another object, another load of the same files
    assert second._solver is first._solver and second._interval is first._interval
    assert second.builds[0] < first.builds[0] / 10  # no construction (a hash of the model's function)
    other_config = NMPC(SurrogateModel.from_dir(SPARSE), dataclasses.replace(SMALL, horizon=4))
    other_model = NMPC(SurrogateModel.from_dir(DEFAULT_MODELS / "inputskip"), SMALL)
    assert len({id(m._solver) for m in (first, other_config, other_model)}) == 3
    x0, v_prev = _state(2.6), np.array([0.024, 0.0005, 0.05])
    a, b = first.solve(x0, 140_000.0, v_prev), second.solve(x0, 140_000.0, v_prev)
    assert a.success and b.success and np.array_equal(a.v, b.v) and np.array_equal(a.x, b.x)
    second.bias[:] = 1e-4  # state stays per NMPC: the bias, the warm start
    assert not first.bias.any() and first._guess is not second._guess


# ---------------------------------------------------------------------------------------------------------------
# Safety


def test_clip_inputs_respects_bounds_rate_and_automatic():
    v, moved = clip_inputs(np.array([0.1, np.nan, 0.055]), 0.050, LOW, HIGH, 0.0005)
    assert moved and v[0] == 0.06 and np.isnan(v[1]) and v[2] == pytest.approx(0.0505)
    v, moved = clip_inputs(np.array([0.02, 0.001, 0.0498]), 0.050, LOW, HIGH, 0.0005)
    assert not moved and v.tolist() == [0.02, 0.001, 0.0498]


def _check_inputs(trace, rate: float) -> None:
    """Applied inputs finite, within the potline's bounds, the ACD within the rate limit per interval."""
    u = trace.u
    assert np.all(np.isfinite(u))
    assert np.all(u[:, 0] >= 0) and np.all(u[:, 2] >= 0)
    assert np.all((u[:, 4] >= 0.040 - 1e-12) & (u[:, 4] <= 0.060 + 1e-12))
    assert np.max(np.abs(np.diff(u[:, 4]))) <= rate + 1e-9


def test_injected_failure_applies_the_shifted_plan_then_the_fallback():
    mpc = NMPC(OracleModel(), MPCConfig(interval_steps=6, horizon=4, jit=False))
    failing = {1, 2, 3, 4}
    controller = SafeController(mpc, SafetyConfig(shifted_intervals=2), inject_failure=lambda k: k in failing)
    plant = LocalPlant(Potline(1, 5, x0=_state(2.5)[None]))
    trace = run_loop(plant, controller, 6 * 7, interval_steps=6, progress=False)
    assert trace.modes == ["mpc", "shifted", "shifted", "fallback", "fallback", "mpc", "mpc"]
    s = controller.summary()
    assert (s["failures"], s["shifted_intervals"], s["fallback_intervals"]) == (4, 2, 2)
    kinds = [e["event"] for e in s["events"]]
    assert kinds.count("solve failed") == 4 and kinds.count("fallback") == 2
    # shifted moves are the last feasible plan's next moves; the fallback hands the feeds to the cell
    first = trace.plans[0].v
    np.testing.assert_allclose(trace.u[6, [0, 2, 4]], first[1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(trace.u[12, [0, 2, 4]], first[2], rtol=0, atol=1e-8)
    assert plant.potline.manual.shape == (1, 3)
    _check_inputs(trace, mpc.config.acd_rate)


def test_the_alumina_guard_raises_a_feed_that_would_end_the_interval_too_low(monkeypatch):
    """A plan that starves a cell at 2.29 % alumina gets the feed that ends the interval at the guard's 2.3 %
    (measured alumina, consumption k3 I), logged; at 3 %, or with the guard off, the plan's feed stands."""
    mpc = NMPC(OracleModel(), SMALL)
    n = SMALL.horizon
    starving = Plan(np.tile([0.005, 0.0005, 0.05], (n, 1)), np.zeros((n + 1, 8)), True, "Solve_Succeeded", 5, 0.1, 1.0)
    monkeypatch.setattr(mpc, "solve", lambda *a, **k: starving)
    current, v_prev = 140_000.0, np.array([0.005, 0.0005, 0.05])
    low = _state(2.29)
    bath = low[1] + low[2] + low[3]
    need = 1.7e-7 * current + (0.023 * bath - low[1]) / mpc.interval_s  # kg/s; k3 of plant.params
    guarded = SafeController(mpc, SafetyConfig()).decide(low, current, v_prev, 0.05)
    assert guarded.mode == "mpc" and guarded.v[0] == pytest.approx(need, rel=1e-12) and 0.005 < need < 0.06
    assert any(e.startswith("alumina guard") for e in guarded.events)
    end_pct = (
        100
        * (low[1] + (need - 1.7e-7 * current) * mpc.interval_s)
        / (bath + (need - 1.7e-7 * current) * mpc.interval_s)
    )
    assert end_pct == pytest.approx(2.3, abs=0.01)  # the bath grows with the alumina: just below 2.3 %
    plain = SafeController(mpc, SafetyConfig()).decide(_state(3.0), current, v_prev, 0.05)
    off = SafeController(mpc, SafetyConfig(alumina_guard_pct=0.0)).decide(low, current, v_prev, 0.05)
    assert plain.v[0] == off.v[0] == 0.005 and not plain.events and not off.events


def test_failure_of_the_first_solve_falls_back_at_once_and_inputs_stay_finite():
    mpc = NMPC(OracleModel(), MPCConfig(interval_steps=6, horizon=3, jit=False))
    controller = SafeController(mpc, SafetyConfig(shifted_intervals=3), inject_failure=lambda k: True)
    plant = LocalPlant(Potline(1, 5, x0=_state(3.0)[None]))
    plant.command(np.array([0.02, 0.0, 0.0580]))  # the fallback ramps the ACD back at the rate limit
    plant.advance(1)
    trace = run_loop(plant, controller, 6 * 3, interval_steps=6, progress=False)
    assert trace.modes == ["fallback"] * 3
    np.testing.assert_allclose(trace.u[::6, 4], [0.0575, 0.0570, 0.0565])
    _check_inputs(trace, mpc.config.acd_rate)


def test_watchdog_hands_the_cell_back_when_measurements_stop():
    plant = LocalPlant(Potline(1, 2, x0=_state(3.0)[None]))
    plant.command(np.array([0.03, 0.001, 0.048]))
    assert np.all(np.isfinite(plant.potline.manual))
    with Watchdog(0.2, plant.automatic) as dog:
        for _ in range(4):  # fed: quiet
            time.sleep(0.05)
            dog.feed()
        assert dog.expired == 0
        deadline = time.monotonic() + 5.0
        while dog.expired == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert dog.expired == 1
    assert np.all(np.isnan(plant.potline.manual))  # every input back to the cell's own control
    with pytest.raises(ValueError, match="timeout_s"):
        Watchdog(0.0, plant.automatic)


def test_a_held_watchdog_allows_its_limit_then_counts_from_the_release():
    """While the controllers decide (``hold``) the watchdog allows the longer limit, not its timeout; past the
    limit it still fires; after the block the silence counts from the release. A settable clock: no timing."""
    now = [0.0]
    poll = 0.1  # real seconds for the watchdog's thread (it checks every timeout / 4 = 0.05 s) to look again

    def at(t: float) -> None:
        now[0] = t
        time.sleep(poll)

    def fired(n: int) -> bool:  # the thread may be late on a loaded machine: wait for it
        deadline = time.monotonic() + 5.0
        while dog.expired < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return dog.expired == n

    with Watchdog(0.2, lambda: None, clock=lambda: now[0]) as dog:  # timeout 0.2 "s" of the settable clock
        with dog.hold(10.0):
            at(5.0)  # > timeout, < limit: quiet
            assert dog.expired == 0
        at(5.1)  # 0.1 after the release
        assert dog.expired == 0
        at(5.3)  # 0.3 after the release
        assert fired(1)
        dog.feed()
        with dog.hold(10.0):
            at(16.0)  # 10.7 after the feed, past the limit: a decision that long still hands the cell back
            assert fired(2)


# ---------------------------------------------------------------------------------------------------------------
# Model swap


def _promote_inputskip(twin: TwinClient, model: TwinModel, tmp_path: Path, description: str) -> Any:
    """Register the committed InputSkip model as a new version of "cell", make it champion and wait until
    ``model``'s watcher has fetched it (up to 15 s); returns the new version's info."""
    v2 = tmp_path / "v2"
    shutil.copytree(DEFAULT_MODELS / "inputskip", v2)
    new, _ = twin.register("cell", v2, description=description)
    twin.set_alias("cell", "champion", new.version)
    deadline = time.monotonic() + 15.0
    while not model.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    return new


def test_a_model_swap_in_the_twin_is_picked_up_by_the_running_mpc(twin, tmp_path):
    model = TwinModel(twin, "cell")
    try:
        mpc = NMPC(model, SMALL)
        x0 = _state(3.0)
        first = mpc.solve(x0, 140_000.0, np.array([0.024, 0.0005, 0.05]))
        assert first.success and model.version == 1
        new = _promote_inputskip(twin, model, tmp_path, "swap test")
        assert model.pending()
        assert model.version == 1  # nothing changes until the next solve
        second = mpc.solve(x0, 140_000.0, first.v[0])
        assert model.version == new.version and model.revision == 1 and len(mpc.builds) == 2
        assert second.success
        assert model.describe()["kind"] == "inputskip"
        assert model.events[-1] == {"event": "swapped", "from": 1, "to": new.version}
    finally:
        model.close()
        twin.set_alias("cell", "champion", 1)


def test_a_new_model_compiles_in_the_background_while_the_current_problem_solves(twin, tmp_path, monkeypatch):
    """With JIT, the swap's compile runs on a thread (here a stub compiler that waits, then fails) while the
    problem of the old model keeps solving; the new problem takes over at the first solve after it is done."""
    release, calls = threading.Event(), []

    def stub_build(source, name, flags=(), libs=(), *, key_extra=""):
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            release.wait(30.0)
        raise BuildError("the compiler is stubbed out in this test")

    monkeypatch.setattr(mpc_module, "build_shared_library", stub_build)
    monkeypatch.setattr(mpc_module, "find_compiler", lambda: "cc")
    model = TwinModel(twin, "cell")
    try:
        with pytest.warns(UserWarning, match="compiling the MPC failed"):
            mpc = NMPC(model, dataclasses.replace(SMALL, jit=True))
        x0, v = _state(3.0), np.array([0.024, 0.0005, 0.05])
        assert mpc.solve(x0, 140_000.0, v).success and mpc.problem_revision == 0
        new = _promote_inputskip(twin, model, tmp_path, "background compile test")
        deadline = time.monotonic() + 15.0
        for _ in range(2):  # the source swapped; the compile waits: the old problem solves
            plan = mpc.solve(x0, 140_000.0, v)
            assert plan.success and model.version == new.version and model.revision == 1
            assert mpc.rebuilding and mpc.problem_revision == 0 and len(mpc.builds) == 1
        assert calls[0] == threading.main_thread().name and calls[1].startswith("nmpc-rebuild")
        described = mpc.describe_problem()  # what the report says: the problem still on the old model
        assert described["problem_revision"] == 0 and described["model_revision"] == 1 and described["rebuilding"]
        release.set()
        while mpc._pending is not None and not mpc._pending[2].done() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.warns(UserWarning, match="compiling the MPC failed"):  # taken over in the virtual machine
            plan = mpc.solve(x0, 140_000.0, v)
        assert plan.success and not mpc.rebuilding and mpc.problem_revision == 1 and len(mpc.builds) == 2
        mpc.close()
    finally:
        release.set()
        model.close()
        twin.set_alias("cell", "champion", 1)


# ---------------------------------------------------------------------------------------------------------------
# Closed loop


def test_oracle_mpc_reduces_a_window_violation_against_doing_nothing():
    x0 = _state(1.7)  # alumina below its window
    n, steps = 3, 20

    def run(controller):
        plant = LocalPlant(Potline(1, 3, x0=x0[None]))
        if controller is None:
            plant.command(np.array([0.0, 0.0, 0.05]))  # doing nothing: no feed, ACD held
            for _ in range(n * steps):
                plant.advance(1)
            return plant.potline.states[0]
        run_loop(plant, controller, n * steps, interval_steps=steps, progress=False)
        return plant.potline.states[0]

    mpc = NMPC(OracleModel(), MPCConfig(interval_steps=steps, horizon=3, jit=False))
    with_mpc, idle = run(SafeController(mpc)), run(None)
    u = np.array([0.0, 140_000.0, 0.0, 0.0, 0.05])
    pa_mpc = controlled(with_mpc, u)[0][0]
    pa_idle = controlled(idle, u)[0][0]
    assert violation(pa_mpc, WINDOWS[0]) < violation(pa_idle, WINDOWS[0]) - 0.05
    assert pa_mpc > pa_idle + 0.05


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_configs_validate_their_fields():
    with pytest.raises(ValueError, match=r"MPCConfig: horizon: must be >= 1, got 0"):
        MPCConfig(horizon=0)
    with pytest.raises(ValueError, match=re.escape("MPCConfig: hessian: must be one of")):
        MPCConfig(hessian="newton")
    with pytest.raises(ValueError, match=re.escape("CostWeights: energy: must be >= 0, got -1.0")):
        CostWeights(energy=-1.0)
    with pytest.raises(ValueError, match=re.escape("SafetyConfig: shifted_intervals")):
        SafetyConfig(shifted_intervals=-1)
    with pytest.raises(
        ValueError, match=re.escape("MPCConfig: backoff[0]: 1.0 leaves nothing of the window alumina_pct")
    ):
        MPCConfig(backoff=(1.0, 0.2, 1.0, 400.0))
    with pytest.raises(ValueError, match=re.escape("MPCConfig: backoff: must have 4 items")):
        MPCConfig(backoff=(0.1,))
    with pytest.raises(
        ValueError, match=re.escape("MPCConfig: backoff_high[1]: 1.9 leaves nothing of the window alf3_pct")
    ):
        MPCConfig(backoff_high=(0.3, 1.9, 1.0, 400.0))
    with pytest.raises(ValueError, match=re.escape("MPCConfig: violation_factor: must have 4 items, got (1.0, 2.0)")):
        MPCConfig(violation_factor=(1.0, 2.0))
    assert MPCConfig(violation_factor=3.0, backoff_high=None).violation_factors == (3.0,) * 4
    assert MPCConfig(backoff_high=None).backoffs_high == MPCConfig().backoff
    with pytest.raises(ValueError, match=re.escape("Scenario.hours")):
        Scenario(hours=0.0, seed=1)
    scenarios = (Scenario(hours=1.0, seed=1),)
    patient = MPCConfig(max_wall_s=10.0)
    config = SystemConfig(scenarios, ("baseline", "sparse", "dense"), mpc_by_controller={"dense": patient})
    assert config.mpc_of("dense") is patient and config.mpc_of("sparse") is config.mpc
    with pytest.raises(ValueError, match=re.escape("mpc_by_controller: 'oracle' is not one of this run's NMPC")):
        SystemConfig(scenarios, ("baseline", "sparse"), mpc_by_controller={"oracle": patient})
    with pytest.raises(ValueError, match=re.escape("mpc_by_controller: 'baseline' is not one of")):
        SystemConfig(scenarios, ("baseline", "sparse"), mpc_by_controller={"baseline": patient})
    with pytest.raises(ValueError, match=re.escape("mpc_by_controller['sparse'].interval_steps (30) must equal")):
        SystemConfig(scenarios, ("sparse",), mpc_by_controller={"sparse": MPCConfig(interval_steps=30)})
    with pytest.raises(ValueError, match=re.escape("mpc_by_controller['sparse'] must be an MPCConfig")):
        SystemConfig(scenarios, ("sparse",), mpc_by_controller={"sparse": {"max_wall_s": 10}})
    with pytest.raises(ValueError, match=re.escape("model must be a controller.models.ModelSource")):
        NMPC(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be one of"):
        to_casadi(load_model(SPARSE).surrogate, mean=True, what="jacobian")
