"""Float32 compute (``precision="float32"``): the compiled kernel against the numpy float32 reference on every
architecture, prior and float32 layout; float32 against float64 on the committed trained model over a potline
horizon; the float64 path untouched; determinism, cell independence and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from identification.modelfile import load_model
from identification.rollout import (
    Float32Reference,
    NumpyRolloutEngine,
    RolloutEngine,
    compiled_rollout_available,
    make_rollout_engine,
    summary_of,
)
from identification.surrogate import Surrogate
from plant import aprbs, sample_initial_states, simulate
from twin.registry.served import NOMINAL_INPUT, NOMINAL_STATE

needs_compiler = pytest.mark.skipif(not compiled_rollout_available(), reason="no working C compiler")

PRETRAINED = Path(__file__).resolve().parents[2] / "identification" / "pretrained" / "sparse-inputskip"

F32_TOL = 1e-5  # kernel vs numpy, both float32 layers, over 50 steps, relative to how far each state moves in
# the run: float32 sums in another order, amplified by these random models (measured up to 8e-7; a float32
# ulp is 6e-8, and a derivative sums 20 terms larger than itself). Float32 vs float64 is as close.
F32_VS_F64_RTOL = 1e-6  # float32 vs float64 layers on the trained model, 360 steps, relative to the states
F64_RTOL = 1e-9  # the float64 kernel against Surrogate.simulate (as in test_fast_rollout)

SPECS = {
    "dense": {"seed": 1},
    "inputskip": {"seed": 2, "skip": True},
    "sparse_dead": {"seed": 3, "density": 0.2, "dead": True},
    "blocks8": {"seed": 5, "blocks": 8, "density": 0.6},
    "hybrid": {"seed": 6, "density": 0.4, "prior": "wrong_liquidus"},
    "ten_members": {"seed": 8, "m": 10, "density": 0.3, "skip": True},
}


@pytest.fixture(scope="module")
def models(random_surrogate) -> dict[str, Surrogate]:
    def make(seed: int, m: int = 3, prior: str = "none", blocks: int = 1, **kw) -> Surrogate:
        return random_surrogate(
            seed, m, hidden=(24,) * 4 if blocks > 1 else (20,) * 4, blocks=blocks, prior=prior, out_std=0.02,
            out_scale=(0.01, 0.2) if prior == "none" else (1e-4, 1e-3), **kw,
        )  # fmt: skip

    return {name: make(**spec) for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """37 cells (a multiple of no block size), 50 steps of the plant's own states and inputs."""
    rng = np.random.default_rng(11)
    x0 = sample_initial_states(rng, 37)
    tr = simulate(x0, aprbs(rng, 37, 50), engine="numpy")
    return x0, tr.u  # (37, 8), (37, 50, 5)


@pytest.fixture(scope="module")
def trained() -> Surrogate:
    return load_model(PRETRAINED).surrogate


def assert_close_to_motion(got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    """``got`` within ``tol`` of ``ref`` ``(M, B, T + 1, 8)``, relative to each state's largest motion in ``ref``
    (the states are offsets of 1e2..1e4 that move far less: relative to them, any error looks small)."""
    motion = np.max(np.abs(ref - ref[:, :, :1]), axis=(0, 1, 2))  # (8,)
    assert np.all(motion > 0)
    err = float(np.max(np.abs(got - ref) / motion))
    assert err <= tol, f"differs by {err:.3g} of a state's motion, more than {tol:g}"


def _potline(b: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``b`` states near the nominal operating point, nominal inputs with a noisy current: (B, 8), (B, H, 5)."""
    rng = np.random.default_rng(seed)
    x0 = NOMINAL_STATE * (1 + rng.normal(0, 0.002, (b, 8)))
    u = np.broadcast_to(NOMINAL_INPUT, (b, h, 5)).copy()
    u[:, :, 1] += rng.normal(0, 500.0, (b, h))
    return x0, u


@needs_compiler
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("b", [1, 3, 8, 16, 37])  # every float32 layout: 8, 16 and 32 cells, padded
def test_compiled_float32_equals_the_numpy_float32_reference(models, data, name, b):
    s = models[name]
    eng = RolloutEngine(s)
    x0, u = data[0][:b], data[1][:b]
    ref = Float32Reference(s).simulate(x0, u)
    assert np.all(np.isfinite(ref)) and np.ptp(ref[..., 5]) > 0  # a fair test: bounded, and it moved
    got = eng.simulate(x0, u, precision="float32")
    assert_close_to_motion(got, ref, F32_TOL)
    np.testing.assert_array_equal(NumpyRolloutEngine(s).simulate(x0, u, "float32"), ref)
    mean_ref = Float32Reference(s).simulate_mean(x0, u)[None]
    assert_close_to_motion(eng.simulate_mean(x0, u, "float32")[None], mean_ref, F32_TOL)
    # float32 is honoured (not the float64 result), and as close to it as to the float32 reference
    f64 = eng.simulate(x0, u)
    assert not np.array_equal(got, f64)
    assert_close_to_motion(got, f64, F32_TOL)


@needs_compiler
@pytest.mark.parametrize("b", [2, 3, 37])
def test_float32_summary_is_the_summary_of_the_float32_members(models, data, b):
    eng = RolloutEngine(models["ten_members"])
    x0, u = data[0][:b], data[1][:b]
    got = eng.simulate_summary(x0, u, members=True, precision="float32")
    states = eng.simulate(x0, u, precision="float32")
    np.testing.assert_array_equal(got.members, states)  # the same kernel, bit for bit
    ref = summary_of(states, u, members=True)
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-14, atol=0)
    np.testing.assert_allclose(got.spread, ref.spread, rtol=1e-9, atol=1e-14 * np.abs(ref.mean).max())
    np.testing.assert_allclose(got.outputs, ref.outputs, rtol=1e-12, atol=0)


@needs_compiler
def test_float32_against_float64_on_the_trained_model_over_360_steps(trained):
    eng = RolloutEngine(trained)
    x0, u = _potline(20, 360)
    s64 = eng.simulate_summary(x0, u, members=True)
    s32 = eng.simulate_summary(x0, u, members=True, precision="float32")
    assert np.all(np.isfinite(s64.members)) and np.ptp(s64.mean[:, :, 5]) > 0.1  # bounded, and it moved
    np.testing.assert_allclose(s32.members, s64.members, rtol=F32_VS_F64_RTOL, atol=0)
    np.testing.assert_allclose(s32.mean, s64.mean, rtol=F32_VS_F64_RTOL, atol=0)
    # the outputs (superheat is a difference of temperatures: its relative error is larger)
    np.testing.assert_allclose(s32.outputs, s64.outputs, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(s32.mean, s64.mean)


@needs_compiler
def test_the_float64_path_is_unchanged_by_float32_calls(models, data):
    s = models["ten_members"]
    eng = RolloutEngine(s)
    x0, u = data
    before = eng.simulate(x0, u)
    summary_before = eng.simulate_summary(x0, u)
    eng.simulate(x0, u, precision="float32")
    eng.simulate_summary(x0, u, precision="float32")
    np.testing.assert_array_equal(eng.simulate(x0, u, precision="float64"), before)
    np.testing.assert_array_equal(eng.simulate_summary(x0, u).mean, summary_before.mean)
    np.testing.assert_array_equal(RolloutEngine(s).simulate(x0, u), before)
    np.testing.assert_allclose(before, s.simulate(x0, u), rtol=F64_RTOL, atol=0)


@needs_compiler
def test_float32_is_deterministic_and_a_cells_run_does_not_depend_on_the_batch(models, data):
    s = models["hybrid"]
    x0, u = data
    one = RolloutEngine(s, threads=1).simulate(x0, u, "float32")
    two = RolloutEngine(s, threads=2).simulate(x0, u, "float32")
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(RolloutEngine(s).simulate(x0[5:6], u[5:6], "float32"), one[:, 5:6])
    np.testing.assert_array_equal(RolloutEngine(s).simulate(x0[3:12], u[3:12], "float32"), one[:, 3:12])


def test_a_bad_precision_is_refused_by_every_engine_and_call(models, data):
    x0, u = data[0][:2], data[1][:2, :3]
    engines = [NumpyRolloutEngine(models["dense"]), make_rollout_engine(models["dense"])]
    for eng in engines:
        for method in (eng.simulate, eng.simulate_summary, eng.simulate_mean):
            with pytest.raises(ValueError, match=r"precision must be one of \['float64', 'float32'\], got 'float16'"):
                method(x0, u, precision="float16")
    with pytest.raises(ValueError, match="got 32"):
        engines[1].simulate(x0, u, precision=32)  # type: ignore[arg-type]
