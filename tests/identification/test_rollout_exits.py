"""Where the members and the mean leave the valid domain, as the summary reports it (:class:`Exits`): the
compiled kernel's exits (the summary work items and the post-pass after member quads) against the plant's own
guard :func:`plant.domain.check_domain` on the same trajectories, on constructed drifts whose exit steps are
known, and against the numpy engine, in float64 and float32 compute."""

from __future__ import annotations

import numpy as np
import pytest

from identification.data import Normalization
from identification.network import Architecture, EnsembleWeights
from identification.rollout import (
    Exits,
    NumpyRolloutEngine,
    RolloutEngine,
    compiled_rollout_available,
    exits_of,
    summary_of,
)
from identification.surrogate import Surrogate
from plant.domain import check_domain
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.signals import INPUTS, STATES, X

needs_compiler = pytest.mark.skipif(not compiled_rollout_available(), reason="no working C compiler")

H = 30
DT = 10.0
_BATH = 13_750.0 / (1.0 - 0.03 - 0.11)
NOMINAL = np.array([3260.0, 0.03 * _BATH, 0.11 * _BATH, 13_750.0, 9875.0, 975.0, 820.0, 582.0])
LEDGE_RATE = np.array([0.0, -1.0, 1.0, 0.0, 0.0])  # kg/s per member: member 1 melts its ledge, member 2 grows it
ALUMINA_RATE = np.array([-0.9, -0.3, -0.5, -0.5, -0.3])  # kg/s per member: every member consumes alumina
BOX_LOW_ALUMINA = 300.0  # kg: the mean's box on alumina (wide elsewhere)


def _alumina_floor(x: np.ndarray) -> float:
    """The alumina mass at which the percentage reaches the domain's lower end, with the other masses of x."""
    return (x[X.M_ALF3] + x[X.M_CRYOLITE]) * DEFAULT_LIMITS.alumina_pct[0] / (100.0 - DEFAULT_LIMITS.alumina_pct[0])


def drift_model() -> Surrogate:
    """5 members whose derivative is a constant per member (the output biases, kg/s) plus a tiny
    state-dependent part (weights of 1e-9: the layers do real work, the trajectories stay straight lines to
    1e-6 of a step)."""
    rng = np.random.default_rng(0)
    arch = Architecture(hidden=(8, 8))
    ws = tuple(1e-9 * rng.normal(size=(5, a, b)) for a, b in arch.layer_shapes)
    bs = [rng.normal(0, 1e-9, (5, b)) for _, b in arch.layer_shapes]
    bs[-1] = np.zeros((5, 8))
    bs[-1][:, X.M_LEDGE] = LEDGE_RATE
    bs[-1][:, X.M_AL2O3] = ALUMINA_RATE
    low = np.array([s.low for s in (*STATES, *INPUTS)])
    high = np.array([s.high for s in (*STATES, *INPUTS)])
    norm = Normalization((low + high) / 2, (high - low) / 4, np.zeros(8), np.ones(8), DT)
    return Surrogate(EnsembleWeights(arch, ws, tuple(bs)), norm)


def scenarios() -> tuple[np.ndarray, np.ndarray, Exits]:
    """Four scenarios ``x0`` (4, 8), inputs ``u`` (4, H, 5) and the exits they are built to have:

    0. stays inside the domain and the box;
    1. member 1's ledge (-10 kg a step) falls below 500 kg at step 12; the mean's ledge stays (+-10 cancel);
    2. alumina starts 7.5 of the mean's steps (-5 kg) above the domain's floor: the mean leaves at step 8,
       each member when its own rate takes it there;
    3. alumina starts 3.5 of the mean's steps above the box: the mean leaves the box at step 4, not the
       domain; member 0 (-9 kg a step) leaves the domain at step 18.
    """
    x0 = np.tile(NOMINAL, (4, 1))
    x0[1, X.M_LEDGE] = DEFAULT_LIMITS.min_ledge_mass + 10.0 * 11.5
    x0[2, X.M_AL2O3] = _alumina_floor(x0[2]) + 5.0 * 7.5
    x0[3, X.M_AL2O3] = BOX_LOW_ALUMINA + 5.0 * 3.5
    u = np.broadcast_to(np.array([0.024, 140_000.0, 0.0, 0.0, 0.05]), (4, H, 5)).copy()
    member = np.full((5, 4), -1)
    member[1, 1] = 12
    for i in (2, 3):  # step k: alumina x0 + rate * dt * k below the floor
        for m, rate in enumerate(ALUMINA_RATE):
            k = int(np.floor((x0[i, X.M_AL2O3] - _alumina_floor(x0[i])) / (-rate * DT))) + 1
            member[m, i] = k if k <= H else -1
    assert member[:, 2].tolist() == [5, 13, 8, 8, 13] and member[:, 3].tolist() == [18, -1, -1, -1, -1]
    expected = Exits(DEFAULT_LIMITS, box(), member, np.array([-1, -1, 8, -1]), np.array([-1, -1, 0, 4]))
    return x0, u, expected


def box() -> tuple[np.ndarray, np.ndarray]:
    low, high = NOMINAL * 0.5, NOMINAL * 1.5
    low[X.M_AL2O3] = BOX_LOW_ALUMINA
    low[X.M_LEDGE] = 0.0
    return low, high


def _assert_exits_equal(got: Exits, want: Exits) -> None:
    assert got.limits == want.limits
    np.testing.assert_array_equal(got.members, want.members)
    np.testing.assert_array_equal(got.mean, want.mean)
    if want.mean_box is None:
        assert got.mean_box is None
    else:
        assert got.mean_box is not None
        np.testing.assert_array_equal(got.mean_box, want.mean_box)


def _oracle(members: np.ndarray, mean: np.ndarray, limits: DomainLimits, bx) -> Exits:
    """The first faulty step of every trajectory by :func:`check_domain`, step by step."""

    def first(x: np.ndarray) -> np.ndarray:
        bad = check_domain(x, limits) != 0  # (..., T)
        return np.where(bad.any(-1), np.argmax(bad, axis=-1), -1)

    mean_box = None
    if bx is not None:
        with np.errstate(invalid="ignore"):
            out = ~((mean >= bx[0]) & (mean <= bx[1])).all(-1)
        mean_box = np.where(out.any(-1), np.argmax(out, axis=-1), -1)
    return Exits(limits, bx, first(members), first(mean), mean_box)


@pytest.fixture(scope="module")
def model() -> Surrogate:
    return drift_model()


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize("pick", [[1], [2], [3, 0], [0, 1, 2, 3], [2, 3, 0, 1, 1, 0, 3, 2, 2]])
def test_exits_are_where_the_constructed_drifts_leave(model, engine, precision, pick):
    if engine == "compiled" and not compiled_rollout_available():
        pytest.skip("no working C compiler")
    eng = RolloutEngine(model) if engine == "compiled" else NumpyRolloutEngine(model)
    x0, u, expected = scenarios()
    x0, u = x0[pick], u[pick]
    s = eng.simulate_summary(x0, u, members=True, precision=precision, box=box())
    assert s.exits is not None and s.members is not None
    want = Exits(DEFAULT_LIMITS, box(), expected.members[:, pick], expected.mean[pick], None)
    if expected.mean_box is not None:
        want = Exits(DEFAULT_LIMITS, box(), want.members, want.mean, expected.mean_box[pick])
    _assert_exits_equal(s.exits, want)
    _assert_exits_equal(s.exits, _oracle(s.members, s.mean, DEFAULT_LIMITS, box()))
    lean = eng.simulate_summary(x0, u, precision=precision)  # no box, no members kept: the same domain exits
    assert lean.exits is not None and lean.exits.mean_box is None and lean.exits.box is None
    np.testing.assert_array_equal(lean.exits.members, s.exits.members)
    np.testing.assert_array_equal(lean.exits.mean, s.exits.mean)


@needs_compiler
def test_exits_follow_the_limits_asked_for(model):
    x0, u, _ = scenarios()
    tight = DomainLimits(min_ledge_mass=3300.0)  # every nominal ledge (3260 kg) is already outside at step 0
    s = RolloutEngine(model).simulate_summary(x0, u, limits=tight)
    assert s.exits is not None and s.exits.limits == tight
    members = RolloutEngine(model).simulate(x0, u)
    _assert_exits_equal(s.exits, _oracle(members, s.mean, tight, None))
    assert s.exits.mean[0] == 0 and (s.exits.members[:, 0] == 0).all()
    assert s.exits.members[2, 0] == 0  # member 2 grows its ledge, but starts outside


@needs_compiler
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("b", [1, 2, 3, 9, 37])
def test_kernel_exits_equal_the_plant_guard_on_diverging_members(random_surrogate, b, precision):
    """A random ensemble whose larger members blow up (NaN and inf states, percentages of 0 / 0 and of
    negative masses): the kernel's exits are check_domain's on the very same trajectories."""
    s = random_surrogate(9, 5, density=0.5, scale=np.array([1.0, 1.0, 50.0, 200.0, 1000.0]))
    rng = np.random.default_rng(4)
    x0 = NOMINAL * (1 + 0.05 * rng.normal(size=(b, 8)))
    u = np.broadcast_to(np.array([0.024, 140_000.0, 0.0, 0.0, 0.05]), (b, 40, 5)).copy()
    eng = RolloutEngine(s)
    members = eng.simulate(x0, u, precision)
    bx = (np.quantile(members[0].reshape(-1, 8), 0.1, 0), np.quantile(members[0].reshape(-1, 8), 0.9, 0))
    got = eng.simulate_summary(x0, u, members=True, precision=precision, box=bx)
    np.testing.assert_array_equal(got.members, members)
    assert got.exits is not None
    want = _oracle(members, got.mean, DEFAULT_LIMITS, bx)
    _assert_exits_equal(got.exits, want)
    _assert_exits_equal(exits_of(members, got.mean, DEFAULT_LIMITS, bx), want)
    assert (want.members >= 0).any() and (want.members == -1).any()  # a fair test: some leave, some stay
    assert not np.isfinite(members).all()
    ref = summary_of(members, u, members=True, box=bx)  # numpy's summary: the same mean, spread and exits
    np.testing.assert_array_equal(got.mean, ref.mean)
    np.testing.assert_array_equal(got.spread, ref.spread)
    assert ref.exits is not None
    _assert_exits_equal(got.exits, ref.exits)


@needs_compiler
def test_a_box_of_the_wrong_shape_is_refused(model):
    x0, u, _ = scenarios()
    with pytest.raises(ValueError, match="box must be a pair"):
        RolloutEngine(model).simulate_summary(x0, u, box=(np.zeros(8), np.ones(7)))
    with pytest.raises(ValueError, match="box must be a pair"):
        NumpyRolloutEngine(model).simulate_summary(x0, u, box=np.zeros((2, 8)))  # type: ignore[arg-type]
