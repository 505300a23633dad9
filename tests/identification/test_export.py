"""CasADi export against a torch float64 forward pass (the oracle) and Surrogate; graph size vs sparsity."""

from __future__ import annotations

import itertools

import casadi as ca
import numpy as np
import pytest
import torch

from identification.export import compare_sparse_dense, operation_count, to_casadi
from identification.surrogate import PRIORS, Surrogate
from plant.physics import rhs
from plant.signals import INPUTS, STATES

LOW = np.array([s.low for s in (*STATES, *INPUTS)])
HIGH = np.array([s.high for s in (*STATES, *INPUTS)])
RTOL = 1e-9
N_HIDDEN = 80  # 4 x 20 hidden units


SETTINGS = {  # random_surrogate(seed, **settings); coverage: every unit keeps an input and an output
    "dense": dict(seed=1),
    "inputskip": dict(seed=2, skip=True),
    "sparse": dict(seed=3, density=0.18, coverage=True, dead=True),
    "sparse_skip": dict(seed=4, skip=True, density=0.2, coverage=True),
    "hybrid": dict(seed=5, density=0.4, coverage=True, prior="wrong_liquidus"),
}


@pytest.fixture(scope="module")
def points() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return rng.uniform(LOW[:8], HIGH[:8], (16, 8)), rng.uniform(LOW[8:], HIGH[8:], (16, 5))


def torch_oracle(s: Surrogate, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Every member's physical derivative ``(M, B, 8)``: the training code's batched forward pass in float64."""
    n, w = s.normalization, s.weights
    z = (torch.from_numpy(np.concatenate([x, u], axis=1)) - torch.from_numpy(n.feature_mean)) / torch.from_numpy(
        n.feature_std
    )  # (B, 13)
    h = z.expand(s.n_members, *z.shape)  # (M, B, 13)
    ws = [torch.from_numpy(a) for a in w.weights]
    bs = [torch.from_numpy(b)[:, None, :] for b in w.biases]  # (M, 1, n_out)
    seen = [h]
    for wi, bi in zip(ws[:-1], bs[:-1], strict=True):
        h = torch.relu(torch.baddbmm(bi, h, wi))
        seen.append(h)
    last = torch.cat(seen, dim=-1) if w.architecture.skip else h
    out = torch.baddbmm(bs[-1], last, ws[-1]) * torch.from_numpy(n.target_std) + torch.from_numpy(n.target_mean)
    out = out.numpy()
    params = PRIORS[s.prior]
    return out if params is None else out + rhs(x, u, params)


def evaluate(f: ca.Function, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``f`` at each of B points, evaluated one by one with numpy float64 inputs: ``(B, 8)``."""
    return np.stack([np.asarray(f(xi, ui)).ravel() for xi, ui in zip(x, u, strict=True)])


def close(got: np.ndarray, ref: np.ndarray) -> None:
    """Relative error at most 1e-9, measured against each state's derivative scale where a component is near 0."""
    scale = np.maximum(np.abs(ref), np.abs(ref).max(axis=0))  # (..., 8)
    err = np.abs(got - ref) / scale
    assert got.shape == ref.shape and err.max() <= RTOL, err.max()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_export_equals_torch_and_surrogate(name: str, points, random_surrogate):
    s = random_surrogate(**SETTINGS[name])
    x, u = points
    oracle = torch_oracle(s, x, u)  # (M, B, 8)
    numpy_path = s.derivative(x, u)
    close(numpy_path, oracle)
    for m in (0, s.n_members - 1):
        got = evaluate(to_casadi(s, member=m), x, u)
        close(got, oracle[m])
        close(got, numpy_path[m])
    got = evaluate(to_casadi(s, mean=True), x, u)
    close(got, oracle.mean(axis=0))
    close(got, s.mean().derivative(x, u))
    # Batched evaluation (casadi map) gives the same numbers.
    f = to_casadi(s, mean=True).map(len(x))
    np.testing.assert_array_equal(np.asarray(f(x.T, u.T)).T, got)


@pytest.mark.parametrize("name", ["dense", "sparse", "hybrid"])
def test_export_step_equals_surrogate_step(name: str, points, random_surrogate):
    s = random_surrogate(**SETTINGS[name])
    x, u = points
    ref = s.step(x, u)  # (M, B, 8)
    close(evaluate(to_casadi(s, member=1, what="step"), x, u), ref[1])
    close(evaluate(to_casadi(s, mean=True, what="step"), x, u), x + s.dt * s.mean().derivative(x, u))
    f = to_casadi(s, member=0, what="step")
    assert f.name_in() == ["x", "u"] and f.name_out() == ["x_next"] and f.size_out(0) == (8, 1)


def test_function_signature(random_surrogate):
    f = to_casadi(random_surrogate(**SETTINGS["dense"]), member=0)
    assert f.name_in() == ["x", "u"] and f.name_out() == ["dxdt"]
    assert f.size_in(0) == (8, 1) and f.size_in(1) == (5, 1) and f.is_a("SXFunction")


def test_op_count_follows_nonzeros(random_surrogate):
    """Each non-zero weight costs one multiplication and one addition, each hidden unit one fmax."""
    counts = []
    for density in (1.0, 0.5, 0.18, 0.05):
        s = random_surrogate(11, 1, density=density, coverage=True)
        nnz = int(s.weights.nonzero().sum())
        c = operation_count(to_casadi(s))
        assert c["mul"] == nnz and c["add"] == nnz and c["fmax"] == N_HIDDEN
        assert c["arithmetic"] == 2 * nnz + N_HIDDEN
        counts.append((nnz, c["arithmetic"], c["n_instructions"]))
    for column in zip(*counts, strict=True):  # non-zeros, arithmetic, instructions all fall together
        assert all(a > b for a, b in itertools.pairwise(column)), counts


def test_sparse_export_is_smaller_than_dense(random_surrogate):
    dense, sparse = random_surrogate(12, 2), random_surrogate(12, 2, density=0.18, coverage=True)
    for kw in ({"member": 0}, {"mean": True}):
        d = operation_count(to_casadi(dense, **kw))
        sp = operation_count(to_casadi(sparse, **kw))
        for key in ("n_nodes", "n_instructions", "mul", "add", "arithmetic"):
            assert sp[key] < d[key], (key, sp[key], d[key])
    cmp = compare_sparse_dense(sparse, member=0)
    d0 = operation_count(to_casadi(dense, member=0))
    assert cmp["dense"]["arithmetic"] == d0["arithmetic"] == 2 * 1620 + N_HIDDEN
    assert cmp["sparse"]["mul"] == cmp["nonzero_weights"] < 0.3 * cmp["weights"]
    assert (
        cmp["ratio"] == pytest.approx(cmp["sparse"]["arithmetic"] / cmp["dense"]["arithmetic"]) and cmp["ratio"] < 0.5
    )
    # The ensemble mean costs the members' weights plus one addition per output and extra member.
    mean = compare_sparse_dense(sparse, mean=True)
    assert mean["sparse"]["mul"] == mean["nonzero_weights"] == int(sparse.weights.nonzero().sum())


def test_dead_units_are_folded(random_surrogate):
    s = random_surrogate(**SETTINGS["sparse"])
    nnz_member0 = int(s.weights.nonzero()[0].sum())
    c = operation_count(to_casadi(s, member=0))
    assert c["fmax"] <= N_HIDDEN - 2 and c["mul"] < nnz_member0


def test_bad_arguments(random_surrogate):
    s = random_surrogate(**SETTINGS["dense"])
    with pytest.raises(ValueError, match="choose member"):
        to_casadi(s)
    with pytest.raises(ValueError, match="not both"):
        to_casadi(s, member=0, mean=True)
    with pytest.raises(ValueError, match=r"member must be an integer in \[0, 3\)"):
        to_casadi(s, member=3)
    with pytest.raises(ValueError, match="unknown what"):
        to_casadi(s, member=0, what="rk4")
    with pytest.raises(ValueError, match=r"SX casadi\.Function"):
        a = ca.MX.sym("a")
        operation_count(ca.Function("g", [a], [a * 2]))
