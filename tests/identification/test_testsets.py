"""Test sets beyond the training excitation, the data generator's custom excitations and initial states, and the
evaluation API (chosen windows and steps)."""

from __future__ import annotations

import numpy as np
import pytest

from identification.metrics import WINDOWS, score_rollouts
from identification.testsets import CONTROL_INTERVAL_STEPS, OUTSIDE_BOX, TEST_SETS, fault_free, make_test_set
from plant.datasets import generate
from plant.excitation import INITIAL_BOX, Exogenous, aprbs, initial_states_in, sample_initial_states
from plant.signals import U, X

STEPS = 400


def _inside(values: np.ndarray, ranges) -> np.ndarray:
    ranges = [ranges] if np.ndim(ranges) == 1 else ranges
    return np.any([(values >= lo) & (values <= hi) for lo, hi in ranges], axis=0)


def _box_quantities(x: np.ndarray) -> dict[str, np.ndarray]:
    bath = x[:, X.M_CRYOLITE] + x[:, X.M_AL2O3] + x[:, X.M_ALF3]
    return {
        "ledge_kg": x[:, X.M_LEDGE],
        "alumina_pct": 100 * x[:, X.M_AL2O3] / bath,
        "alf3_pct": 100 * x[:, X.M_ALF3] / bath,
        "cryolite_kg": x[:, X.M_CRYOLITE],
        "metal_kg": x[:, X.M_METAL],
        "bath_c": x[:, X.T_BATH],
        "ledge_c": x[:, X.T_LEDGE],
        "wall_c": x[:, X.T_WALL],
    }


# -- generate: custom excitations and initial states -------------------------------------------------------------


def test_generate_takes_an_exogenous_a_callable_and_initial_states() -> None:
    exo = aprbs(np.random.default_rng(3), 2, 50)
    x0 = sample_initial_states(np.random.default_rng(4), 2)
    given, meta = generate(1, 2, 50, exo, initial_states=x0, progress=False)
    assert np.array_equal(given.x[:, 0], x0) and np.array_equal(given.u[:, :, U.CURRENT], exo.current)
    assert meta.excitation == "custom, initial states given"

    def mine(rng: np.random.Generator, n: int, t: int) -> Exogenous:
        return aprbs(rng, n, t)

    by_call, meta = generate(1, 2, 50, mine, progress=False)
    by_name, _ = generate(1, 2, 50, "aprbs", progress=False)
    assert np.array_equal(by_call.x, by_name.x) and meta.excitation == "mine"  # the same stream, the same data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"excitation": "nope"}, "unknown excitation"),
        ({"excitation": 3}, "must be a name"),
        ({"excitation": lambda rng, n, t: 5}, "not an Exogenous"),
        ({"excitation": aprbs(np.random.default_rng(0), 2, 20)}, r"shape \(2, 20\)"),
        ({"initial_states": np.zeros((3, 7))}, r"shape \(2, 8\)"),
        ({"initial_states": np.full((2, 8), np.nan)}, "finite"),
    ],
)
def test_generate_refuses_bad_excitations_and_initial_states(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        generate(0, 2, 30, progress=False, **kwargs)


def test_initial_states_in_a_box_and_around_it() -> None:
    rng = np.random.default_rng(0)
    inside = _box_quantities(initial_states_in(rng, 400))
    for name, (lo, hi) in INITIAL_BOX.items():
        assert np.all((inside[name] >= lo - 1e-9) & (inside[name] <= hi + 1e-9)), name
    around = _box_quantities(initial_states_in(rng, 400, OUTSIDE_BOX))
    for name, ranges in OUTSIDE_BOX.items():
        assert np.all(_inside(around[name], np.add(ranges, [-1e-9, 1e-9]))), name
        lo, hi = INITIAL_BOX[name]
        assert np.any(around[name] < lo) and np.any(around[name] > hi), name  # both sides are drawn
    with pytest.raises(ValueError, match="unknown initial-state quantities"):
        initial_states_in(rng, 2, {"ledge": (1, 2)})
    with pytest.raises(ValueError, match="low <= high"):
        initial_states_in(rng, 2, {"ledge_kg": (5, 1)})


# -- the test sets ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets() -> dict:
    return {name: make_test_set(name, 0, 4, STEPS) for name in TEST_SETS}


def test_every_set_is_fault_free_and_reproducible(sets: dict) -> None:
    for name, traj in sets.items():
        assert traj.n_traj == 4 and traj.x.shape == (4, STEPS + 1, 8) and np.all(traj.fault_step < 0), name
    again = make_test_set("closed-loop", 0, 4, STEPS)
    assert np.array_equal(again.x, sets["closed-loop"].x) and np.array_equal(again.u, sets["closed-loop"].u)
    assert not np.array_equal(make_test_set("closed-loop", 1, 4, STEPS).u, again.u)
    # the aprbs set is the study's test set: generate(seed, ..., split="test") filtered
    raw, _ = generate(0, 14, STEPS, split="test", progress=False)
    assert np.array_equal(sets["aprbs"].x, fault_free(raw, 4).x)


def test_closed_loop_moves_the_acd_as_the_nmpc_may(sets: dict) -> None:
    u = sets["closed-loop"].u
    acd = u[:, :, U.ACD]
    assert np.all((acd >= 0.040 - 1e-12) & (acd <= 0.060 + 1e-12))
    per_interval = acd[:, ::CONTROL_INTERVAL_STEPS]
    assert np.all(np.abs(np.diff(per_interval, axis=1)) <= 0.0005 + 1e-12)
    for k0 in range(0, STEPS, CONTROL_INTERVAL_STEPS):  # held within each interval
        block = acd[:, k0 : k0 + CONTROL_INTERVAL_STEPS]
        assert np.all(block == block[:, :1])
    # alumina fed as a continuous rate (the feed controller's dumps on top), not as rare impulses
    extra_steps = np.mean(u[:, :, U.FEED_AL2O3] > 0)
    assert extra_steps > 0.5


def test_current_ramps_ramp(sets: dict) -> None:
    current = sets["current-ramps"].u[:, :, U.CURRENT]
    assert np.all((current >= 118_000 - 1e-6) & (current <= 155_000 + 1e-6))
    second = np.abs(np.diff(current, 2, axis=1))
    moving = np.abs(np.diff(current, axis=1)) > 1e-6
    assert np.mean(moving) > 0.3  # the current is ramping much of the time (aprbs steps: a few steps in 400)
    assert np.mean(second[moving[:, 1:]] < 1e-3 * 140_000) > 0.9  # and the ramps are straight


def test_outside_box_starts_outside_the_training_box(sets: dict) -> None:
    q = _box_quantities(sets["outside-box"].x[:, 0])
    for name, ranges in OUTSIDE_BOX.items():
        assert np.all(_inside(q[name], np.add(ranges, [-1e-6, 1e-6]))), name


def test_make_test_set_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown test set 'nope'"):
        make_test_set("nope", 0, 2, 10)


# -- score_rollouts with chosen windows and steps -----------------------------------------------------------------


def test_score_rollouts_with_chosen_windows_and_steps() -> None:
    truth = np.zeros((3, 11, 8))
    pred = np.zeros((3, 11, 8))
    pred[0] = np.arange(11)[:, None] * 0.1  # e_k = 0.1 k
    pred[1, 6:] = 10.0  # diverges at step 6
    sigma = np.ones(8)
    s = score_rollouts(pred, truth, sigma, windows={"early": (0, 5), "late": (5, 11)}, steps=(2, 8))
    assert s.windows == {"early": (0, 5), "late": (5, 11)}
    np.testing.assert_allclose(s.window_means["early"], [0.2, np.nan, 0.0], rtol=1e-12)
    np.testing.assert_allclose(s.window_means["late"], [0.75, np.nan, 0.0], rtol=1e-12)
    np.testing.assert_allclose(s.at_steps[2], [0.2, 0.0, 0.0], rtol=1e-12)  # before rollout 1 diverged
    np.testing.assert_allclose(s.at_steps[8], [0.8, np.nan, 0.0], rtol=1e-12)
    summary = s.summary()
    assert summary["diverged_by_early"] == 0 and summary["diverged_by_late"] == 1 and summary["diverged"] == 1
    assert summary["step8_median"] == pytest.approx(0.4) and summary["late_median"] == pytest.approx(0.375)
    assert score_rollouts(pred, truth, sigma).windows == WINDOWS
    for bad, message in (({"w": (5, 20)}, r"stop <= 11"), ({"w": (3, 3)}, "start < stop"), ({"w": 3}, "pair")):
        with pytest.raises(ValueError, match=message):
            score_rollouts(pred, truth, sigma, windows=bad)
    with pytest.raises(ValueError, match=r"steps \[11\]"):
        score_rollouts(pred, truth, sigma, steps=[11])
