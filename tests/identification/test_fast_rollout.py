"""The compiled rollout engine against ``Surrogate.simulate`` (the oracle, 1e-9 relative) on every architecture,
prior and batch layout; the C summary against numpy's; divergence, determinism, concurrency, validation and the
fallback without a compiler."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import threading
import warnings
from pathlib import Path

import casadi as ca
import numpy as np
import pytest

from alutwin.cbuild import NATIVE_FLAGS, build_shared_library
from identification.rollout import (
    ENGINES,
    OUTPUT_ORDER,
    NumpyRolloutEngine,
    RolloutEngine,
    Summary,
    algebraic_outputs,
    compiled_rollout_available,
    make_rollout_engine,
    summary_of,
    vector_source,
)
from identification.rollout.engine import _empty_aligned
from identification.rollout.translate import prelude_source
from identification.surrogate import Surrogate
from plant import aprbs, sample_initial_states, simulate
from plant.engine import CompiledEngineError, CompilerUnavailableWarning
from plant.physics import algebraic

RTOL = 1e-9  # kernel vs numpy over 50 steps: last-bit differences of each step, amplified by the model

needs_compiler = pytest.mark.skipif(not compiled_rollout_available(), reason="no working C compiler")


def _model(
    make,
    seed: int,
    m: int = 3,
    skip: bool = False,
    density: float | None = None,
    blocks: int = 1,
    prior: str = "none",
    dead: bool = False,
    scale: float | np.ndarray = 1.0,
) -> Surrogate:
    """``random_surrogate`` with this file's sizes: four layers of 20 (24 with blocks), output scales that keep
    a hybrid model's rollouts near the prior."""
    return make(
        seed,
        m,
        hidden=(24, 24, 24, 24) if blocks > 1 else (20, 20, 20, 20),
        skip=skip,
        blocks=blocks,
        density=density,
        dead=dead,
        scale=scale,
        prior=prior,
        out_std=0.02,
        out_scale=(0.01, 0.2) if prior == "none" else (1e-4, 1e-3),
    )


SPECS = {
    "dense": {"seed": 1},
    "inputskip": {"seed": 2, "skip": True},
    "sparse_dead": {"seed": 3, "density": 0.2, "dead": True},
    "sparse_skip": {"seed": 4, "skip": True, "density": 0.25},
    "blocks8": {"seed": 5, "blocks": 8, "density": 0.6},
    "hybrid": {"seed": 6, "density": 0.4, "prior": "wrong_liquidus"},
    "single_member": {"seed": 7, "m": 1, "density": 0.3},
    "ten_members": {"seed": 8, "m": 10, "density": 0.3, "skip": True},
}
DIVERGENT = {"seed": 9, "m": 5, "density": 0.5, "scale": np.array([1.0, 1.0, 50.0, 200.0, 1000.0])}


@pytest.fixture(scope="module")
def models(random_surrogate) -> dict[str, Surrogate]:
    return {name: _model(random_surrogate, **spec) for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """37 cells (a multiple of no block size), 50 steps of the plant's own states and inputs."""
    rng = np.random.default_rng(11)
    x0 = sample_initial_states(rng, 37)
    tr = simulate(x0, aprbs(rng, 37, 50), engine="numpy")
    return x0, tr.u  # (37, 8), (37, 50, 5)


@pytest.fixture(scope="module")
def engines(models) -> dict[str, RolloutEngine]:
    return {name: RolloutEngine(s) for name, s in models.items()} if compiled_rollout_available() else {}


@needs_compiler
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize(("b", "h"), [(1, 50), (37, 50), (37, 1), (16, 20), (2, 7)])
def test_equals_surrogate_simulate(engines, data, name, b, h):
    eng = engines[name]
    s = eng.surrogate
    x0, u = data[0][:b], data[1][:b, :h]
    ref = s.simulate(x0, u)
    assert np.all(np.isfinite(ref)) and np.ptp(ref[..., 5]) > 0  # a fair test: bounded, and it moved
    got = eng.simulate(x0, u)
    assert got.shape == (s.n_members, b, h + 1, 8)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=0)
    np.testing.assert_allclose(eng.simulate_mean(x0, u), s.mean().simulate(x0, u), rtol=RTOL, atol=0)


OUTPUTS_RTOL = 1e-12  # the kernel's outputs against numpy's: the same operations, except that CasADi's graph of
# the liquidus rounds one term differently from numpy's evaluation order (2 ulp at most, seen on 2 % of points),
# and the C library's exp and pow may differ from numpy's SIMD ones in the last bit
MEAN_RTOL = 1e-14  # a mean over at most 10 members, by two implementations of the same sums: a few ulp
SPREAD_ATOL = 1e-14  # of the mean's magnitude: std subtracts the mean, so the mean's last bit shows at its scale


def assert_summaries_close(got: Summary, ref: Summary) -> None:
    """Two implementations' summaries of the same member states agree to rounding (NaN where the other is)."""
    np.testing.assert_allclose(got.mean, ref.mean, rtol=MEAN_RTOL, atol=0)
    np.testing.assert_array_equal(np.isnan(got.spread), np.isnan(ref.spread))
    ok = ~np.isnan(ref.spread)
    err = np.abs(got.spread[ok] - ref.spread[ok])
    bound = MEAN_RTOL * np.abs(ref.spread[ok]) + SPREAD_ATOL * np.abs(ref.mean[ok])
    assert np.all(err <= bound), f"spread differs by up to {np.max(err - bound):.3g} beyond the bound"
    np.testing.assert_allclose(got.outputs, ref.outputs, rtol=OUTPUTS_RTOL, atol=0)


@needs_compiler
@pytest.mark.parametrize("name", ["dense", "sparse_skip", "hybrid", "ten_members", "single_member"])
@pytest.mark.parametrize("b", [1, 2, 3, 16, 37])
def test_summary_equals_numpy_summary_of_the_members(engines, data, name, b):
    eng = engines[name]
    x0, u = data[0][:b], data[1][:b, :30]
    members = eng.simulate(x0, u)
    ref = summary_of(members, u, members=True)
    # the numpy summary does numpy's mean and std in blocks (the same operations, another implementation)
    np.testing.assert_allclose(ref.mean, members.mean(axis=0), rtol=MEAN_RTOL, atol=0)
    assert_summaries_close(Summary(members.mean(axis=0), members.std(axis=0), ref.outputs, None), ref)
    if eng.n_members > 1:
        assert np.all(ref.spread[:, 1:] > 0)  # the members do differ: the spread is tested, not just zeros
    runs = []
    for threads in (1, 2):
        got = RolloutEngine(eng.surrogate, threads=threads).simulate_summary(x0, u, members=True)
        np.testing.assert_array_equal(got.members, members)  # the same kernel: bit for bit, any layout and threads
        assert got.outputs.shape == (b, 31, len(OUTPUT_ORDER))
        assert_summaries_close(got, ref)
        runs.append(got)
    for field in ("mean", "spread", "outputs"):  # the same code on 1 and 2 threads: bit for bit
        np.testing.assert_array_equal(getattr(runs[1], field), getattr(runs[0], field))
    lean = eng.simulate_summary(x0, u)
    assert lean.members is None
    np.testing.assert_array_equal(lean.mean, got.mean)
    np.testing.assert_array_equal(lean.outputs, got.outputs)


def test_numpy_outputs_are_the_plant_outputs(models, data):
    x0, u = data[0][:4], data[1][:4, :6]
    states = NumpyRolloutEngine(models["sparse_skip"]).simulate(x0, u)
    out = algebraic_outputs(states.mean(axis=0), u)  # (4, 7, 6)
    last = states.mean(axis=0)[:, -1]
    alg = algebraic(last[2], u[2, -1])  # the last state goes with the last input
    # numpy on a batch and on one point may take other exp and pow loops (SIMD or scalar): a last bit apart
    assert out[2, -1, OUTPUT_ORDER.index("superheat")] == pytest.approx(alg.superheat, rel=1e-14)
    assert out[2, -1, OUTPUT_ORDER.index("power")] == pytest.approx(alg.power, rel=1e-14)


@needs_compiler
def test_summary_of_divergent_members_is_nan_not_an_error(random_surrogate, data):
    s = _model(random_surrogate, **DIVERGENT)
    x0, u = data
    got = RolloutEngine(s).simulate_summary(x0, u, members=True)
    bad = ~np.isfinite(got.members).all(axis=0)  # (B, H + 1, 8): a member diverged there
    assert bad.any()
    assert np.isnan(got.mean[bad]).all() and np.isnan(got.spread[bad]).all()
    assert np.isfinite(got.mean[~bad]).all()


@needs_compiler
def test_sparse_models_do_less_work(engines):
    dense, sparse = engines["dense"], engines["sparse_dead"]
    assert dense.nonzeros_per_member == dense.surrogate.weights.architecture.n_weights
    counted = sparse.surrogate.weights.nonzero().sum(axis=1).mean()
    assert sparse.nonzeros_per_member < counted  # the dead units' weights are folded away too


@needs_compiler
def test_zero_steps_and_numpy_inputs(engines, data):
    eng = engines["sparse_skip"]
    x0 = data[0][:3]
    out = eng.simulate(x0, np.zeros((3, 0, 5)))
    assert out.shape == (3, 3, 1, 8)
    np.testing.assert_array_equal(out[:, :, 0], np.broadcast_to(x0, (3, 3, 8)))
    u = data[1][:3, :5]
    # Lists and Fortran order are converted like Surrogate.simulate does; an empty batch is empty.
    np.testing.assert_array_equal(eng.simulate(x0.tolist(), np.asfortranarray(u)), eng.simulate(x0, u))
    assert eng.simulate(np.zeros((0, 8)), np.zeros((0, 4, 5))).shape == (3, 0, 5, 8)
    assert eng.simulate_mean(np.zeros((0, 8)), np.zeros((0, 4, 5))).shape == (0, 5, 8)


@needs_compiler
def test_a_cell_does_not_depend_on_its_batch_or_threads(models, data):
    """Layouts (member quads for one cell, blocks of 16 cells for many) and thread counts agree bit for bit."""
    s = models["ten_members"]
    x0, u = data
    one = RolloutEngine(s, threads=1)
    batch = one.simulate(x0, u)
    for threads in (2, 3):
        np.testing.assert_array_equal(RolloutEngine(s, threads=threads).simulate(x0, u), batch)
    for b in (0, 20, 36):
        np.testing.assert_array_equal(one.simulate(x0[b : b + 1], u[b : b + 1])[:, 0], batch[:, b])
    np.testing.assert_array_equal(one.simulate(x0[5:7], u[5:7]), batch[:, 5:7])
    mean = one.simulate_mean(x0, u)
    np.testing.assert_array_equal(RolloutEngine(s, threads=2).simulate_mean(x0, u), mean)
    np.testing.assert_array_equal(one.simulate_mean(x0[7:8], u[7:8])[0], mean[7])


@needs_compiler
def test_concurrent_calls_match_sequential(models, data):
    eng = RolloutEngine(models["hybrid"], threads=2)
    x0, u = data
    jobs = [(x0[i : i + 9], u[i : i + 9, : 20 + i]) for i in range(0, 28, 7)]  # 4 different requests
    expected = [(eng.simulate(a, b), eng.simulate_mean(a, b)) for a, b in jobs]
    results: list = [None] * len(jobs)

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = (eng.simulate(*jobs[i]), eng.simulate_mean(*jobs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for (a, am), (b, bm) in zip(results, expected, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)


@needs_compiler
@pytest.mark.parametrize("prior", ["none", "wrong_liquidus"])
def test_divergent_members_are_non_finite_where_the_reference_is(random_surrogate, data, prior):
    s = _model(random_surrogate, **DIVERGENT, prior=prior)
    x0, u = data
    with np.errstate(all="ignore"):
        ref = s.simulate(x0, u)
    got = RolloutEngine(s).simulate(x0, u)  # no crash
    bad_ref = ~np.isfinite(ref)
    assert bad_ref.any() and np.isfinite(ref).any()  # some members diverge, some cells survive a while
    with np.errstate(all="ignore"):
        huge_ref = np.abs(ref) > 1e100
        huge_got = np.abs(got) > 1e100
    # Non-finite wherever the reference is (or is about to be: huge).
    assert np.all(~np.isfinite(got) | huge_got | ~bad_ref)
    # Non-finite only where the reference's cell has a non-finite or huge state at that step.
    cell_bad = np.any(bad_ref | huge_ref, axis=-1, keepdims=True)
    assert np.all(np.isfinite(got) | cell_bad)
    # Rollouts the reference keeps bounded agree as usual.
    bounded = np.all(np.isfinite(ref) & (np.abs(ref) < 1e5), axis=(2, 3))  # (M, B)
    assert bounded.any()
    np.testing.assert_allclose(got[bounded], ref[bounded], rtol=RTOL, atol=0)


@needs_compiler
def test_bad_inputs_raise_value_error(engines, data):
    eng = engines["dense"]
    x0, u = data
    with pytest.raises(ValueError, match="x0 must be"):
        eng.simulate(x0[:, :7], u)
    with pytest.raises(ValueError, match="x0 must be"):
        eng.simulate(x0[0], u[:1])
    with pytest.raises(ValueError, match="u must be"):
        eng.simulate(x0, u[:5])
    with pytest.raises(ValueError, match="u must be"):
        eng.simulate_mean(x0, u[..., :4])
    bad = x0.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        eng.simulate(bad, u)
    bad_u = u.copy()
    bad_u[0, 4, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        eng.simulate_mean(x0, bad_u)
    with pytest.raises(ValueError, match="threads"):
        RolloutEngine(eng.surrogate, threads=0)
    with pytest.raises(ValueError, match="surrogate"):
        RolloutEngine("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be one of"):
        make_rollout_engine(eng.surrogate, engine="fast")


def test_numpy_engine_is_the_reference(models, data):
    s = models["sparse_skip"]
    x0, u = data[0][:4], data[1][:4, :10]
    eng = make_rollout_engine(s, engine="numpy")
    assert isinstance(eng, NumpyRolloutEngine) and set(ENGINES) == {"auto", "compiled", "numpy"}
    np.testing.assert_array_equal(eng.simulate(x0, u), s.simulate(x0, u))
    np.testing.assert_array_equal(eng.simulate_mean(x0, u), s.mean().simulate(x0, u))
    with pytest.raises(ValueError, match="finite"):
        eng.simulate_mean(np.full((4, 8), np.nan), u)


def test_auto_falls_back_to_numpy_without_compiler(monkeypatch, tmp_path, models, data):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    s = models["single_member"]
    with pytest.raises(CompiledEngineError, match="no C compiler"):
        make_rollout_engine(s, engine="compiled")
    assert not compiled_rollout_available()
    with pytest.warns(CompilerUnavailableWarning, match="numpy"):
        eng = make_rollout_engine(s, engine="auto")
    assert isinstance(eng, NumpyRolloutEngine)
    x0, u = data[0][:2], data[1][:2, :5]
    np.testing.assert_array_equal(eng.simulate(x0, u), s.simulate(x0, u))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_rollout_engine(s, engine="auto")  # warned once only


@needs_compiler
def test_auto_picks_compiled(models):
    assert isinstance(make_rollout_engine(models["dense"], engine="auto"), RolloutEngine)


def test_benchmark_script_runs_shrunken(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[2] / "bench" / "twin_predict_engine.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python bench/NAME.py` has it: for `from _common import`
    spec = importlib.util.spec_from_file_location("twin_predict_engine", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    assert bench.main(["--horizon", "4", "--cells", "3", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] and result["machine"]["cpus_available"] >= 1
    engines = {r["engine"] for r in result["rows"]}
    assert {"numpy", "torch-f64", "torch-f32"} <= engines
    for r in result["rows"]:
        assert r["p50_ms"] > 0 and r["diverged_rollouts"] == 0 and r["bounded_rollouts_compared"] == r["rollouts"]
        if r["engine"] != "torch-f32":
            assert r["max_rel_diff_vs_numpy"] < 1e-9, r


@needs_compiler
def test_vector_translation_of_casadi_graphs(tmp_path):
    """Every operation the prior translator knows, against CasADi's own evaluation, lane by lane."""
    x, u = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    outs = [
        x[0] ** 2.2 + ca.sqrt(x[1]),
        ca.if_else(x[2] < x[3], x[4], 3.0),
        ca.fmin(x[5], x[6]) - ca.fmax(u[0], u[1]),
        ca.log(x[7]) * ca.exp(-u[2]) + ca.tanh(u[2]),
        1 / u[3] + u[4] ** x[0],
        ca.logic_and(x[0] > 1, x[1] <= 2) + ca.logic_or(x[2] == x[3], x[4] != x[5]) + ca.logic_not(x[6] >= 0),
        ca.fabs(x[6] - 0.5) * 2 + ca.floor(x[7]) + ca.atan2(u[0], u[1]),
        x[7] ** 2 + ca.sin(u[4]) * ca.cos(u[3]),
    ]
    f = ca.Function("many", [x, u], [ca.vertcat(*outs)])
    source = (
        prelude_source()
        + vector_source(f)
        + "void eval(const double *a, double *d) { prior_vec((const vd *)a, (vd *)d, 1); }\n"
    )
    path, _ = build_shared_library(source, "vector_source_test", NATIVE_FLAGS, directory=tmp_path)
    lib = ctypes.CDLL(str(path))
    lib.eval.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    rng = np.random.default_rng(3)
    a = _empty_aligned((13, 4))  # (rows, lanes), on a vector boundary as the kernel's scratch is
    a[...] = rng.uniform(0.1, 3.0, (13, 4)).round(1)  # ties for == and <=
    a[:, 0] = a[:, 1]  # lane 0: every comparison of equal values
    d = _empty_aligned((8, 4))  # (rows, lanes): the function is added to it
    d[...] = rng.normal(size=(8, 4))
    expected = d + np.stack([np.asarray(f(a[:8, j], a[8:, j])).ravel() for j in range(4)], axis=1)
    lib.eval(a.ctypes.data, d.ctypes.data)
    # CasADi's virtual machine and the translation call the same C library functions; the translation sums
    # into d, so allow a few ulp
    np.testing.assert_allclose(d, expected, rtol=1e-15, atol=1e-15)
    with pytest.raises(CompiledEngineError, match="OP_ERF"):
        vector_source(ca.Function("erf", [x, u], [ca.erf(x) * 1.0]))
    with pytest.raises(ValueError, match="vector_source needs"):
        vector_source(ca.Function("small", [x], [x]))
