"""Online identification (identification/online/): segments, the sensor-fault screen, warm re-fits, the
multi-step evaluation and the gate, on short runs of the potline with drift and poisoned-sensor scenarios."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from apps.online_demo import DEFAULT_SEED_MODEL
from identification.modelfile import load_model
from identification.network import EnsembleWeights
from identification.online import (
    Evaluation,
    Gate,
    RefitConfig,
    ScreenConfig,
    Segment,
    count_windows,
    evaluate,
    refit,
    rollout_windows,
    screen,
    segments_from_window,
    split_holdout,
    step_ranges,
)
from identification.surrogate import Surrogate
from plant.potline import Potline
from plant.scenarios import ScenarioEvent

HOUR = 360  # steps
HORIZON = 120  # 20 min: the tests' rollouts (the worker's default is 1 h)


def run_potline(n_cells: int, hours: float, events: tuple[ScenarioEvent, ...] = (), seed: int = 1) -> dict:
    """Measured ``y``, true ``x`` (N, T+1, 8) and ``u`` (N, T+1, 5): ``u[:, k]`` drove step k-1 -> k."""
    pl = Potline(n_cells, seed, current_profile="aprbs", scenario=events)
    ys, xs, us = [], [], []
    for k in range(int(hours * HOUR) + 1):
        if k:
            pl.step(1)
        snaps = pl.snapshots()
        ys.append([s.y for s in snaps])
        xs.append([s.x for s in snaps])
        us.append([s.u for s in snaps])
    t = lambda a: np.asarray(a).transpose(1, 0, 2)  # noqa: E731
    return {"y": t(ys), "x": t(xs), "u": t(us), "steps": np.arange(len(ys))}


def window(data: dict, cell: int, a: int, b: int, key: str = "y") -> SimpleNamespace:
    s = data["steps"][a:b]
    return SimpleNamespace(cell=cell, steps=s, time_s=s * 10.0, x=data[key][cell, a:b], u=data["u"][cell, a:b])


def segments(data: dict, a: int, b: int, key: str = "y", cells=None) -> list[Segment]:
    out = []
    for c in cells if cells is not None else range(data["y"].shape[0]):
        out += segments_from_window(window(data, c, a, b, key))
    return out


@pytest.fixture(scope="module")
def seed_model():
    return load_model(DEFAULT_SEED_MODEL)


@pytest.fixture(scope="module")
def drift():
    """3 cells, 2.5 h; the bath-to-ledge heat transfer of every cell rises by 20 % at 0.5 h."""
    return run_potline(3, 2.5, (ScenarioEvent("drift", 1800.0, parameter="h_bath_ledge", factor=1.2),))


@pytest.fixture(scope="module")
def poisoned():
    """3 cells, 2 h: cell 1's bath temperature sensor reads 5 degC high from 0.5 h, cell 2's sticks at 0.5 h."""
    events = (
        ScenarioEvent("offset_sensor", 1800.0, state="T_bath", offset=5.0, cells=(1,)),
        ScenarioEvent("stuck_sensor", 1800.0, state="T_bath", cells=(2,)),
    )
    return run_potline(3, 2.0, events)


# ---------------------------------------------------------------------------------------------------------------
# Segments


def test_segments_split_at_gaps_and_exclusions():
    steps = np.array([*range(10), *range(12, 21)])
    rng = np.random.default_rng(0)
    w = SimpleNamespace(
        cell=4, steps=steps, time_s=steps * 10.0, x=rng.normal(size=(19, 8)), u=rng.normal(size=(19, 5))
    )
    exclude = steps == 15
    segs = segments_from_window(w, exclude=exclude)
    assert [(s.steps[0], s.steps[-1]) for s in segs] == [(0, 9), (12, 14), (16, 20)]
    assert [s.n_steps for s in segs] == [9, 2, 4]
    # u of the transition k -> k+1 is the sample at k+1 (applied over the step that ended there)
    np.testing.assert_array_equal(segs[0].u[0], w.u[1])
    np.testing.assert_array_equal(segs[1].x[0], w.x[10])
    assert all(s.cell == 4 for s in segs)
    with pytest.raises(ValueError, match="exclude must have shape"):
        segments_from_window(w, exclude=np.zeros(3, dtype=bool))
    bad = SimpleNamespace(cell=0, steps=steps[::-1], time_s=steps, x=w.x, u=w.u)
    with pytest.raises(ValueError, match="strictly increasing"):
        segments_from_window(bad)


def test_step_ranges_and_window_counts():
    rng = np.random.default_rng(1)

    def seg(cell: int, first: int, n: int) -> Segment:
        return Segment(cell, np.arange(first, first + n + 1), rng.normal(size=(n + 1, 8)), rng.normal(size=(n, 5)))

    segs = [seg(3, 50, 30), seg(1, 10, 4), seg(3, 5, 12), seg(1, 20, 0), seg(3, 90, 7)]
    assert step_ranges(segs) == {1: [10, 20], 3: [5, 97]} and list(step_ranges(segs)) == [1, 3]
    assert step_ranges([]) == {}
    for horizon, stride in ((1, 1), (4, 3), (7, 2), (12, 5), (31, 1)):
        rows = rollout_windows(segs, horizon, stride)[0].shape[0]
        assert count_windows(segs, horizon, stride) == rows, (horizon, stride)
    assert count_windows(segs, 12, 5) == 5  # starts 0, 5, 10, 15 of the 30 steps, 0 of the 12, none of the rest


def test_split_holdout_is_disjoint(drift):
    segs = segments(drift, 0, 2 * HOUR)
    train, held = split_holdout(segs, {0: 500, 1: 600})
    for s in train:
        assert s.cell == 2 or s.steps[-1] < (500 if s.cell == 0 else 600)
    for s in held:
        assert s.steps[0] >= (500 if s.cell == 0 else 600)
    assert {s.cell for s in held} == {0, 1}
    assert sum(s.n_steps for s in train) + sum(s.n_steps for s in held) == sum(s.n_steps for s in segs) - 2


# ---------------------------------------------------------------------------------------------------------------
# Screening


def test_screen_flags_stuck_and_offset_sensors_but_not_drift(seed_model, drift, poisoned):
    n = drift["y"].shape[1]
    for c in range(3):  # a drift changes derivatives, never the measured state in one step
        assert screen(window(drift, c, 0, n), seed_model).clean
    n = poisoned["y"].shape[1]
    assert screen(window(poisoned, 0, 0, n), seed_model).clean
    offset = screen(window(poisoned, 1, 0, n), seed_model)
    assert [(f.kind, f.state, f.step) for f in offset.faults] == [("level_shift", "T_bath", 180)]
    assert not offset.excluded[:180].any() and offset.excluded[180:].all()
    stuck = screen(window(poisoned, 2, 0, n), seed_model)
    assert stuck.faults[0].kind == "flatline" and stuck.faults[0].state == "T_bath"
    assert 180 <= stuck.faults[0].step <= 181
    with pytest.raises(ValueError, match="flatline_steps"):
        ScreenConfig(flatline_steps=1)


# ---------------------------------------------------------------------------------------------------------------
# Re-fit, evaluation and the gate


@pytest.fixture(scope="module")
def drift_refit(seed_model, drift):
    train, held = split_holdout(segments(drift, 0, drift["y"].shape[1]), dict.fromkeys(range(3), int(1.5 * HOUR)))
    result = refit(seed_model, train, RefitConfig(lr=1e-3, epochs=15, half_life_steps=540.0))
    return result, held


def test_warm_refit_keeps_the_sparsity_pattern_and_normalisation(seed_model, drift_refit):
    result, _ = drift_refit
    w0, w1 = seed_model.surrogate.weights, result.surrogate.weights
    assert w1.masks is not None
    for m0, m1, a in zip(w0.masks, w1.masks, w1.weights, strict=True):
        np.testing.assert_array_equal(m0, m1)
        assert np.all(a[~m0] == 0)
    assert result.surrogate.normalization is seed_model.surrogate.normalization
    assert result.kind == "sparse-inputskip" and result.mode == "warm"
    assert result.seconds < 30.0
    assert result.n_weighted > result.n_samples  # recent samples repeated
    assert not all(np.array_equal(a, b) for a, b in zip(w0.weights, w1.weights, strict=True))


def test_genuine_improvement_is_promoted(seed_model, drift_refit):
    result, held = drift_refit
    sigma = seed_model.surrogate.normalization.state_std
    ev0 = evaluate(seed_model, held, horizon=HORIZON, stride=20, sigma=sigma)
    ev1 = evaluate(result.surrogate, held, horizon=HORIZON, stride=20, sigma=sigma)
    assert ev0.n_rollouts == ev1.n_rollouts >= 12 and ev1.n_diverged == 0
    decision = Gate().decide(seed_model, result.surrogate, ev0, ev1)
    assert decision.promote, decision.reason
    assert decision.ratio <= 0.9 and all(decision.checks.values())
    doc = decision.as_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["champion"]["an_rfmse_mean"] == pytest.approx(ev0.error)
    assert set(doc["champion"]["per_cell"]) == {"0", "1", "2"}


def test_challenger_trained_on_poisoned_data_is_rejected(seed_model, poisoned):
    """A champion already adapted to this potline, then a challenger fitted to data whose bath temperature
    reads 5 degC high on every cell: judged on what the plant really did, it is rejected."""
    n = poisoned["y"].shape[1]
    clean = segments(poisoned, 0, 175, key="x")
    champion = refit(seed_model, clean, RefitConfig(lr=1e-3, epochs=15)).surrogate
    bad = poisoned["x"].copy()
    bad[:, 180:, 5] += 5.0  # the offset sensor, on every cell
    poison = {**poisoned, "y": bad}
    challenger = refit(champion, segments(poison, 0, int(1.25 * HOUR)), RefitConfig(lr=1e-3, epochs=15),
                       kind="sparse-inputskip").surrogate  # fmt: skip
    held = segments(poisoned, int(1.25 * HOUR), n, key="x")
    sigma = seed_model.surrogate.normalization.state_std
    ev0 = evaluate(champion, held, horizon=HORIZON, stride=20, sigma=sigma)
    ev1 = evaluate(challenger, held, horizon=HORIZON, stride=20, sigma=sigma)
    decision = Gate().decide(champion, challenger, ev0, ev1)
    assert not decision.promote
    assert decision.ratio > 1.0, decision.reason
    assert decision.reason.startswith("rejected: ")


def _eval(scores, cells=None, diverged=None) -> Evaluation:
    scores = np.asarray(scores, dtype=float)
    r = scores.size
    cells = np.zeros(r, dtype=np.int64) if cells is None else np.asarray(cells)
    div = ~np.isfinite(scores) if diverged is None else np.asarray(diverged)
    return Evaluation(360, scores, cells, np.arange(r), div)


def test_gate_rejects_a_diverging_challenger(seed_model, drift_refit):
    _, held = drift_refit
    w = seed_model.surrogate.weights
    biases = (*w.biases[:-1], w.biases[-1] + 1e6)
    nan_model = Surrogate(
        EnsembleWeights(w.architecture, w.weights, biases, w.masks), seed_model.surrogate.normalization
    )
    sigma = seed_model.surrogate.normalization.state_std
    ev0 = evaluate(seed_model, held, horizon=HORIZON, stride=20, sigma=sigma)
    ev1 = evaluate(nan_model, held, horizon=HORIZON, stride=20, sigma=sigma)
    assert ev1.n_diverged == ev1.n_rollouts and np.isnan(ev1.error)
    d = Gate().decide(seed_model, nan_model, ev0, ev1)
    assert not d.promote and not d.checks["finite"] and not d.checks["no_new_divergence"]
    assert "not finite" in d.reason
    assert d.as_dict()["challenger"]["an_rfmse_mean"] is None
    json.dumps(d.as_dict(), allow_nan=False)


def test_gate_rejects_a_blown_up_structure(seed_model):
    w = seed_model.surrogate.weights
    rng = np.random.default_rng(0)
    dense = tuple(np.where(m, a, rng.normal(0, 0.05, a.shape)) for a, m in zip(w.weights, w.masks, strict=True))
    blown = Surrogate(EnsembleWeights(w.architecture, dense, w.biases), seed_model.surrogate.normalization)
    d = Gate().decide(seed_model, blown, _eval([0.02] * 8), _eval([0.01] * 8))
    assert not d.promote
    assert d.checks["margin"] and not d.checks["sparsity"] and not d.checks["structure"]
    assert d.nonzero_ratio > 5 and d.dependency_jaccard < 0.7
    assert "non-zero weights" in d.reason


def test_gate_edge_cases(seed_model):
    m = seed_model.surrogate
    # the same model is never "better by the margin"
    d = Gate().decide(m, m, _eval([0.02] * 8), _eval([0.02] * 8))
    assert not d.promote and d.checks["structure"] and "margin" in d.reason and d.dependency_jaccard == 1.0
    # better overall but much worse on one cell
    d = Gate().decide(
        m,
        m,
        _eval([0.05] * 4 + [0.01] * 4, cells=[0] * 4 + [1] * 4),
        _eval([0.01] * 4 + [0.02] * 4, cells=[0] * 4 + [1] * 4),
    )
    assert not d.promote and d.worst_cell == 1 and d.worst_cell_ratio == pytest.approx(2.0) and "cell 1" in d.reason
    # too little held-out data
    d = Gate().decide(m, m, _eval([0.05] * 2), _eval([0.01] * 2))
    assert not d.promote and not d.checks["enough_data"]
    # a new divergence
    d = Gate().decide(m, m, _eval([0.05] * 8), _eval([0.01] * 7 + [np.inf]))
    assert not d.promote and not d.checks["no_new_divergence"]
    with pytest.raises(ValueError, match="same rollouts"):
        Gate().decide(m, m, _eval([0.05] * 8), _eval([0.05] * 7))
    for bad in ({"margin": 1.5}, {"margin": float("nan")}, {"min_rollouts": 0}, {"min_dependency_jaccard": 2.0}):
        with pytest.raises(ValueError, match="Gate"):
            Gate(**bad)
    with pytest.raises(ValueError, match=r"\['warm', 'fresh'\]"):
        RefitConfig(mode="hot")
    with pytest.raises(ValueError, match="kind is required"):
        refit(m, [], RefitConfig())


def test_fresh_refit_runs_in_the_champions_normalisation(seed_model, drift):
    train = segments(drift, 0, HOUR)
    cfg = replace(RefitConfig(mode="fresh", fresh_epochs=2), max_updates=200)
    result = refit(seed_model, train, cfg)
    assert result.mode == "fresh" and result.epochs <= 2
    assert result.surrogate.normalization is seed_model.surrogate.normalization
    assert result.surrogate.weights.masks is not None  # the kind's pruning rounds ran
