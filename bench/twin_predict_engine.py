"""Micro-benchmark: rolling out a surrogate ensemble for the twin's Predict RPC, engine by engine.

Two workloads from the twin issue, each for an ensemble of 10 members over a horizon of 360 steps:

- **(a) one cell**: B = 1 (a Predict call for one cell); target for the compiled engine: at most 3 ms.
- **(b) a potline**: B = 300 cells in one call; target: at most 50 ms.

Two models of the published architecture 13-20-20-20-20-8 with random weights (Kaiming-normal, the output
layer scaled by 0.1), normalised with statistics of simulated plant data, so that rollouts stay in a realistic
range as a trained model's would (the timings do not depend on the values): **dense** (1620 weights per member)
and **sparse** (300 weights per member kept, the largest of each layer in proportion to its size, the rest
masked to exact zeros); plus the sparse model with the hybrid physics prior ``wrong_liquidus``, for the engines
that support it. Initial states and inputs come from the plant simulator (``aprbs`` excitation with the cell's
own feed controllers).

Engines:

1. **numpy**: :meth:`identification.surrogate.Surrogate.simulate` (the reference).
2. **torch-f64**, **torch-f32**: a straightforward batched torch rollout: one ``baddbmm`` per layer and step
   over all members at once, in float64 and float32 (no prior; ``--torch-threads``, default 1).
3. **compiled**: :class:`identification.rollout.RolloutEngine` (default threads), and
   **compiled-1t** with one thread.

Each engine is called ``--repeats`` times per workload (fewer for the slow ones on (b)); the table shows the
median (p50) and 99th percentile (p99, interpolated: with few calls it is close to the slowest) of the wall
time of one call, output allocation included (the JSON also holds the process CPU time: with 2 threads and
the CPUs free, it is up to twice the wall time; where it is not, the machine was busy with other work). Outputs are checked against numpy: the maximum relative
difference over the rollouts numpy keeps bounded, and the number of diverged (non-finite) rollouts, which
should be the same. For scale, the model's own sensitivity is recorded too: numpy against numpy started from
``x0 * (1 + 1e-15)`` (over 360 steps a random model amplifies any rounding by orders of magnitude). The machine may be shared: the load average at the start and at the end is recorded.

Run from the repository root::

    .venv/bin/python bench/twin_predict_engine.py            # writes bench/results/twin_predict_engine.json
    .venv/bin/python bench/twin_predict_engine.py --horizon 20 --cells 7 --repeats 3 --out /tmp/x.json
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from _common import check_positive, load_average, machine, parser, scoped_torch_threads, write_results

from identification.data import Normalization, fit_normalization, make_samples
from identification.network import Architecture, EnsembleWeights
from identification.rollout import RolloutEngine, compiled_rollout_available
from identification.surrogate import Surrogate
from plant import aprbs, sample_initial_states, simulate

__all__ = ["main", "make_models", "run_benchmark", "torch_rollout"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "twin_predict_engine.json"
TARGETS_MS = {"a": 3.0, "b": 50.0}
N_MEMBERS = 10
KEEP = 300  # non-zero weights kept per member in the sparse model


def _normalization(seed: int) -> tuple[Normalization, np.ndarray, np.ndarray]:
    """Normalisation fitted on simulated plant data, and that data's ``x0`` (B, 8) and ``u`` (B, T, 5)."""
    rng = np.random.default_rng(seed)
    x0 = sample_initial_states(rng, 20)
    tr = simulate(x0, aprbs(rng, 20, 500), engine="auto")
    return fit_normalization(make_samples(tr), tr.dt), x0, tr.u


def make_models(seed: int = 0) -> dict[str, Surrogate]:
    """The benchmark's dense, sparse and sparse-hybrid ensembles (random weights, realistic normalisation)."""
    norm, _, _ = _normalization(seed)
    rng = np.random.default_rng(seed + 1)
    arch = Architecture()
    ws = [rng.normal(0.0, np.sqrt(2.0 / a), (N_MEMBERS, a, b)) for a, b in arch.layer_shapes]  # Kaiming normal
    ws[-1] *= 0.1  # a small output layer: the random model then drifts like a trained one instead of running away
    bs = [np.zeros((N_MEMBERS, b)) for _, b in arch.layer_shapes]
    dense = Surrogate(EnsembleWeights(arch, tuple(ws), tuple(bs)), norm)
    masks = []
    for w in ws:  # each layer keeps its share of the KEEP weights: its largest ones, per member
        flat = np.abs(w).reshape(N_MEMBERS, -1)  # (M, n_in * n_out)
        keep = round(KEEP * flat.shape[1] / arch.n_weights)
        cut = -np.sort(-flat, axis=1)[:, keep - 1]  # (M,)
        masks.append(np.abs(w) >= cut[:, None, None])
    masks = tuple(masks)
    sparse_w = EnsembleWeights(arch, tuple(w * m for w, m in zip(ws, masks, strict=True)), tuple(bs), masks)
    return {
        "dense": dense,
        "sparse": Surrogate(sparse_w, norm),
        "sparse-hybrid": Surrogate(sparse_w, norm, "wrong_liquidus"),
    }


def torch_rollout(surrogate: Surrogate, dtype: torch.dtype) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A batched torch rollout of ``surrogate`` (no prior): one ``baddbmm`` per layer and step for all members.

    Returns ``f(x0 (B, 8), u (B, H, 5)) -> (M, B, H + 1, 8)`` (float64 numpy array). The weights are converted
    once, here; each call converts its inputs and its output.
    """
    if surrogate.prior != "none" or surrogate.weights.architecture.skip:
        raise ValueError("the torch baseline covers plain MLPs without a prior")
    t = {"dtype": dtype}
    ws = [torch.as_tensor(w, **t) for w in surrogate.weights.weights]  # (M, n_in, n_out)
    bs = [torch.as_tensor(b, **t)[:, None, :] for b in surrogate.weights.biases]  # (M, 1, n_out)
    n = surrogate.normalization
    fm, fs = torch.as_tensor(n.feature_mean, **t), torch.as_tensor(n.feature_std, **t)
    tm, ts = torch.as_tensor(n.target_mean, **t), torch.as_tensor(n.target_std, **t)
    m, dt = surrogate.n_members, surrogate.dt

    def run(x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            b, h, _ = u.shape
            ut = torch.as_tensor(u, **t)  # (B, H, 5)
            x = torch.as_tensor(x0, **t).expand(m, b, 8)  # (M, B, 8)
            out = torch.empty((m, b, h + 1, 8), **t)
            out[:, :, 0] = x
            for k in range(h):
                z = (torch.cat([x, ut[:, k].expand(m, b, 5)], dim=-1) - fm) / fs  # (M, B, 13)
                for w, bias in zip(ws[:-1], bs[:-1], strict=True):
                    z = torch.relu(torch.baddbmm(bias, z, w))
                x = x + dt * (torch.baddbmm(bs[-1], z, ws[-1]) * ts + tm)
                out[:, :, k + 1] = x
            return out.numpy().astype(np.float64, copy=False)

    return run


def _times(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and process CPU times (s) of ``repeats`` calls after one warm-up call, and the warm-up's result."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, result


def _bounded(ref: np.ndarray) -> np.ndarray:
    """Rollouts ``(M, B)`` the reference keeps finite and below 1e6 in magnitude throughout."""
    with np.errstate(invalid="ignore"):
        return np.all(np.isfinite(ref) & (np.abs(ref) < 1e6), axis=(-2, -1))


def _max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """Largest relative difference over the rollouts the reference keeps bounded (a model that runs away
    amplifies any rounding; those rollouts are counted as diverged instead)."""
    ok = _bounded(ref)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(a[ok] - ref[ok]) / np.maximum(np.abs(ref[ok]), 1e-300)))


def _diverged(out: np.ndarray) -> int:
    """Rollouts ``(M, B)`` with a non-finite state."""
    return int(np.sum(~np.all(np.isfinite(out), axis=(-2, -1))))


def run_benchmark(cells: int, horizon: int, repeats: int, seed: int, torch_threads: int = 1) -> dict:
    """Time every engine on workloads (a) and (b) for every model with ``torch_threads`` torch threads (the
    process's setting is restored afterwards); returns the figures."""
    with scoped_torch_threads(torch_threads):
        return _run(cells, horizon, repeats, seed)


def _run(cells: int, horizon: int, repeats: int, seed: int) -> dict:
    load_start = load_average()
    models = make_models(seed)
    rng = np.random.default_rng(seed + 2)
    x0_all = sample_initial_states(rng, cells)
    u_all = simulate(x0_all, aprbs(rng, cells, horizon), engine="auto").u  # (cells, H, 5)
    workloads = {"a": (x0_all[:1], np.ascontiguousarray(u_all[:1])), "b": (x0_all, u_all)}
    compiled = compiled_rollout_available("none") and compiled_rollout_available("wrong_liquidus")
    rows, prep, sensitivity = [], {}, {}
    for model_name, s in models.items():
        engines: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"numpy": s.simulate}
        if s.prior == "none":
            engines["torch-f64"] = torch_rollout(s, torch.float64)
            engines["torch-f32"] = torch_rollout(s, torch.float32)
        if compiled:
            t0 = time.perf_counter()
            eng = RolloutEngine(s)
            prep[model_name] = {
                "prepare_seconds": time.perf_counter() - t0,
                "nonzeros_per_member": eng.nonzeros_per_member,
            }
            engines["compiled"] = eng.simulate
            engines["compiled-1t"] = RolloutEngine(s, threads=1).simulate
        for wl, (x0, u) in workloads.items():
            ref = None
            # How much the model itself amplifies rounding: numpy against numpy from x0 moved by 1e-15.
            sensitivity[f"{wl}/{model_name}"] = _max_rel(s.simulate(x0 * (1.0 + 1e-15), u), s.simulate(x0, u))
            for name, fn in engines.items():
                slow = wl == "b" and name in ("numpy", "torch-f64", "torch-f32")
                n = max(3, repeats // 10) if slow else repeats
                times, cpu, out = _times(lambda fn=fn, x0=x0, u=u: fn(x0, u), n)
                ref = out if name == "numpy" else ref
                ms = np.asarray(times) * 1e3
                rows.append(
                    {
                        "workload": wl,
                        "cells": x0.shape[0],
                        "horizon": horizon,
                        "members": s.n_members,
                        "model": model_name,
                        "engine": name,
                        "calls": n,
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99)),
                        "min_ms": float(ms.min()),
                        "cpu_p50_ms": float(np.percentile(np.asarray(cpu) * 1e3, 50)),
                        "max_rel_diff_vs_numpy": _max_rel(out, ref),
                        "rollouts": int(np.prod(out.shape[:2])),
                        "bounded_rollouts_compared": int(_bounded(ref).sum()),
                        "diverged_rollouts": _diverged(out),
                    }
                )
    base = {(q["workload"], q["model"], q["engine"]): q["p50_ms"] for q in rows}
    for r in rows:
        r["speedup_vs_numpy"] = base[(r["workload"], r["model"], "numpy")] / r["p50_ms"]
        t64 = base.get((r["workload"], r["model"], "torch-f64"))
        r["speedup_vs_torch_f64"] = None if t64 is None else t64 / r["p50_ms"]
    goals = {}
    for r in rows:
        if r["engine"] == "compiled" and r["model"] in ("dense", "sparse"):
            goals[f"{r['workload']}_{r['model']}_p50_le_{TARGETS_MS[r['workload']]:g}ms"] = (
                r["p50_ms"] <= TARGETS_MS[r["workload"]]
            )
    return {
        "workloads": {
            "a": f"one cell, ensemble of 10, horizon {horizon}",
            "b": f"{cells} cells, ensemble of 10, horizon {horizon}",
            "seed": seed,
        },
        "models": {
            "dense": "13-20-20-20-20-8, Kaiming-normal random weights (output layer x0.1), 1620 per member",
            "sparse": f"the dense model with about {KEEP} weights of each member kept (the largest of each layer, "
            "in proportion to its size), the rest masked to exact zeros",
            "sparse-hybrid": "the sparse model with the wrong_liquidus physics prior",
            "normalisation": "fitted on 20 simulated plant trajectories of 500 steps (aprbs)",
        },
        "compiled_prepare": prep,
        "model_sensitivity": sensitivity,
        "rows": rows,
        "targets_ms": TARGETS_MS,
        "goals": goals,
        "machine": machine(
            load_start, numpy=np.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads()
        ),
    }


def _print(result: dict) -> None:
    print("twin Predict rollouts: " + "; ".join(f"({k}) {v}" for k, v in result["workloads"].items() if k != "seed"))
    head = f"{'wl':<3}{'model':<15}{'engine':<13}{'calls':>6}{'p50 ms':>10}{'p99 ms':>10}{'vs numpy':>10}{'vs torch64':>11}"
    print(head + f"{'max rel diff':>14}{'diverged':>10}")
    for r in result["rows"]:
        t64 = "" if r["speedup_vs_torch_f64"] is None else f"{r['speedup_vs_torch_f64']:.1f}x"
        print(
            f"{r['workload']:<3}{r['model']:<15}{r['engine']:<13}{r['calls']:>6}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['speedup_vs_numpy']:>9.1f}x{t64:>11}{r['max_rel_diff_vs_numpy']:>14.2g}{r['diverged_rollouts']:>10}"
        )
    for name, p in result["compiled_prepare"].items():
        print(f"compiled engine for {name}: prepared in {p['prepare_seconds'] * 1e3:.0f} ms, "
              f"{p['nonzeros_per_member']:.0f} multiply-adds per member and step")  # fmt: skip
    print(
        "model sensitivity (numpy vs numpy from x0 * (1 + 1e-15), max relative difference): "
        + ", ".join(f"{k} {v:.2g}" for k, v in result["model_sensitivity"].items())
    )
    print("targets (compiled, p50): " + ", ".join(f"{k}: {v}" for k, v in result["goals"].items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    p = parser(__doc__, DEFAULT_OUT)
    p.add_argument("--cells", type=int, default=300, help="cells in workload (b) (default 300)")
    p.add_argument("--horizon", type=int, default=360, help="steps of every rollout (default 360)")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per engine (a tenth for slow ones on b)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on CPUs shared with other work, torch's spinning threads "
        "make these tiny products slower with more)",
    )
    args = p.parse_args(argv)
    check_positive(p, args, "cells", "horizon", "repeats", "torch_threads")
    result = run_benchmark(args.cells, args.horizon, args.repeats, args.seed, args.torch_threads)
    _print(result)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
