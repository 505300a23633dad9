"""Benchmark: simulating identification data, 100 trajectories x 5000 steps ("aprbs" plus the feed controllers).

Three ways of producing the same data, timed side by side in one run:

1. **baseline**: the way the published study generated its data: a plain Python loop over trajectories and
   steps that calls a CasADi ``SX`` RK4 ``Function`` (built from :func:`plant.physics.rk4_step`) once per
   step, with the cell's feed controllers evaluated in Python on floats. It has no domain guard. It takes
   minutes for the whole workload, so it is timed on the first ``--baseline-traj`` trajectories and scaled
   linearly to all of them (every trajectory costs the same number of identical calls); the output says so.
2. **numpy**: the batched numpy engine of :mod:`plant.simulator` (one vectorised step for all cells), run once.
3. **compiled**: :mod:`plant.engine`, the same step generated to C by CasADi and looped in C. Building it
   (CasADi code generation plus the C compiler, into an empty folder) is timed separately from the warm run,
   which is the best of ``--repeats`` calls, with all CPUs available to the process and with one thread.
4. **casadi-mapaccum**: the same compiled C step loaded with ``casadi.external`` and looped by CasADi's
   ``mapaccum`` over time and ``map(..., "thread")`` over trajectories: the design the engine's C driver
   loop was measured against (its time includes building the loop for this T and converting to numpy).

It then checks that the engines agree: compiled against numpy over every state of every trajectory
(maximum relative difference, and whether they are bit-identical), and the baseline against numpy on the
trajectories it ran that did not fault. The compiled engine and the baseline build their CasADi functions
with CasADi's usual simplification, which reassociates a few constants, and call the C library's ``exp`` and
``pow``, which may differ from numpy's SIMD ones in the last bit; the cell's feed controllers amplify those
last-bit differences over 5000 steps (the results record how far).

Run from the repository root::

    .venv/bin/python bench/plant_sim.py            # writes bench/results/plant_sim.json
    .venv/bin/python bench/plant_sim.py --n-traj 4 --n-steps 200 --baseline-traj 1 --out /tmp/x.json

Timings on a machine shared with other work are noisy; the load average at the start and the end is recorded.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import casadi as ca
import numpy as np
from _common import check_positive, load_average, machine, parser, write_results

from alutwin.cbuild import compiler_version, find_compiler
from plant import DEFAULT_LIMITS, DEFAULT_PARAMS, aprbs, rk4_step, sample_initial_states, simulate
from plant.engine import build_library, compiled_library, simulate_compiled
from plant.excitation import Exogenous
from plant.params import CellParams
from plant.signals import N_STATES

__all__ = ["main", "baseline_loop", "casadi_mapaccum", "run_benchmark"]

DT = 10.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "plant_sim.json"


def _rule(raw: float, cap: float, floor: float) -> float:
    v = min(max(raw, 0.0), cap)
    return 0.0 if v < floor else v


def _feed_python(x: Sequence[float], dt: float) -> tuple[float, float, float]:
    """The feed controllers of ``plant.md`` on Python floats, as a per-step loop would compute them."""
    bath = x[1] + x[2] + x[3]
    return (
        _rule(30000.0 * (0.023 - x[1] / bath), 220.0 / dt, 140.0 / dt),
        _rule(13000.0 * (0.105 - x[2] / bath), 80.0 / dt, 20.0 / dt),
        _rule(300.0 * (x[4] - 10000.0), 90.0 / dt, 20.0 / dt),
    )


def baseline_loop(x0: np.ndarray, exo: Exogenous, dt: float = DT, params: CellParams = DEFAULT_PARAMS) -> np.ndarray:
    """Simulate with a Python loop calling a CasADi RK4 ``Function`` once per step; returns ``(B, T + 1, 8)``.

    The state stays a CasADi ``DM`` between calls and the input is passed as a list: of the ways tried, this
    spends the least time converting between Python, numpy and CasADi (about half of passing numpy arrays).
    """
    xs_sym, us_sym = ca.SX.sym("x", N_STATES), ca.SX.sym("u", 5)
    rk4 = ca.Function("rk4", [xs_sym, us_sym], [rk4_step(xs_sym, us_sym, dt, params)])
    b, t = exo.shape
    cur, acd, extra_a, extra_f = (a.tolist() for a in (exo.current, exo.acd, exo.alumina_extra, exo.alf3_extra))
    out = np.empty((b, t + 1, N_STATES))  # (B, T + 1, 8)
    for i in range(b):
        x = ca.DM(x0[i])
        values = x.nonzeros()
        out[i, 0] = values
        for k in range(t):
            feed_a, feed_f, tap = _feed_python(values, dt)
            x = rk4(x, [feed_a + extra_a[i][k], cur[i][k], feed_f + extra_f[i][k], tap, acd[i][k]])
            values = x.nonzeros()
            out[i, k + 1] = values
    return out


def casadi_mapaccum(x0: np.ndarray, exo: Exogenous, library: Path, n_threads: int) -> tuple[np.ndarray, float, float]:
    """The compiled step loaded with ``casadi.external``, looped by ``mapaccum`` over T and ``map`` over B.

    Returns ``(x (B, T, 8) after each step, seconds in CasADi's evaluation, seconds converting to numpy)``.
    The variant the compiled engine was measured against (it calls the same C step function).
    """
    b, t = exo.shape
    step = ca.external("alutwin_step", str(library))
    loop = step.mapaccum("loop", t, [0, 1, 2], [0, 1, 2]).map(b, "thread", n_threads)
    exo_cols = np.stack([exo.current, exo.acd, exo.alumina_extra, exo.alf3_extra], axis=-1).reshape(b * t, 4).T
    t0 = time.perf_counter()
    x_next, _, _ = loop(x0.T, np.zeros((1, b)), np.zeros((5, b)), exo_cols)  # (8, B T), (1, B T), (5, B T)
    t1 = time.perf_counter()
    xs = np.asarray(x_next).T.reshape(b, t, N_STATES)  # (B, T, 8)
    return xs, t1 - t0, time.perf_counter() - t1


def _best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    scale = np.maximum(np.abs(b), 1e-300)
    return float(np.max(np.abs(a - b) / scale))


def _c_compiler() -> str | None:
    cc = find_compiler()
    return compiler_version(cc) if cc else None


def run_benchmark(n_traj: int, n_steps: int, baseline_traj: int, seed: int, repeats: int) -> dict:
    """Time the three engines on one seeded workload and check that they agree; returns the figures."""
    load_start = load_average()
    rng = np.random.default_rng(seed)
    x0 = sample_initial_states(rng, n_traj)  # (B, 8)
    exo = aprbs(rng, n_traj, n_steps)  # (B, T) each
    work = n_traj * n_steps

    # 1. baseline, on a subset, scaled linearly
    nb = min(baseline_traj, n_traj)
    sub = Exogenous(exo.current[:nb], exo.acd[:nb], exo.alumina_extra[:nb], exo.alf3_extra[:nb])
    t0 = time.perf_counter()
    x_base = baseline_loop(x0[:nb], sub)
    base_measured = time.perf_counter() - t0
    base_s = base_measured * n_traj / nb

    # 2. numpy engine, once
    t0 = time.perf_counter()
    ref = simulate(x0, exo, engine="numpy")
    numpy_s = time.perf_counter() - t0

    # 3. compiled engine: a cold build into an empty folder, the first call in this process, warm runs
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_library(DT, DEFAULT_PARAMS, DEFAULT_LIMITS, directory=Path(tmp))
        cold_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate(x0[:1], Exogenous(*(a[:1, :1] for a in (exo.current, exo.acd, exo.alumina_extra, exo.alf3_extra))),
             engine="compiled")  # fmt: skip
    first_call_s = time.perf_counter() - t0

    def compiled(n_threads: int | None) -> Callable[[], object]:
        return lambda: simulate_compiled(x0, exo, DT, DEFAULT_PARAMS, DEFAULT_LIMITS, n_threads=n_threads)

    comp_s, (xs, us, fault_step, fault_code) = _best_of(compiled(None), repeats)
    comp1_s, _ = _best_of(compiled(1), repeats)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    # 4. the same C step through casadi.external + mapaccum + map (the design the engine was compared with)
    t0 = time.perf_counter()
    x_map, map_eval_s, map_convert_s = casadi_mapaccum(x0, exo, compiled_library(DT), threads)
    map_s = time.perf_counter() - t0

    ok = ref.fault_code[:nb] == 0
    agreement = {
        "compiled_vs_numpy_max_rel_x": _max_rel(xs, ref.x),
        "compiled_vs_numpy_max_abs_u": float(np.max(np.abs(us - ref.u))),
        "compiled_vs_numpy_bit_identical": bool(np.array_equal(xs, ref.x) and np.array_equal(us, ref.u)),
        "compiled_vs_numpy_faults_equal": bool(
            np.array_equal(fault_step, ref.fault_step) and np.array_equal(fault_code, ref.fault_code)
        ),
        "casadi_mapaccum_vs_numpy_max_rel_x": _max_rel(x_map, ref.x[:, 1:]),
        "baseline_vs_numpy_max_rel_x": _max_rel(x_base[ok], ref.x[:nb][ok]),
        "baseline_trajectories_compared": int(ok.sum()),
        "faulted_trajectories": int(np.sum(ref.fault_code != 0)),
    }

    def row(name: str, seconds: float, **extra: object) -> dict:
        return {
            "engine": name,
            "seconds": seconds,
            "speedup_vs_baseline": base_s / seconds,
            "traj_steps_per_s": work / seconds,
            **extra,
        }

    engines = [
        row(
            "baseline",
            base_s,
            note=f"Python loop + CasADi SX RK4 Function per step; timed on {nb} of {n_traj} trajectories "
            f"({base_measured:.2f} s) and scaled x{n_traj / nb:g}",
            measured_seconds=base_measured,
            measured_trajectories=nb,
        ),
        row("numpy", numpy_s, note="batched numpy engine, one run"),
        row("compiled", comp_s, note=f"best of {repeats}, up to {threads} threads", threads=threads),
        row("compiled-1thread", comp1_s, note=f"best of {repeats}, one thread", threads=1),
        row(
            "casadi-mapaccum",
            map_s,
            note=f"same C step via casadi.external, mapaccum(T).map(B, 'thread', {threads}); one run, including "
            f"building the loop, {map_eval_s:.2f} s evaluating and {map_convert_s:.2f} s converting to numpy",
            eval_seconds=map_eval_s,
            convert_seconds=map_convert_s,
        ),
    ]
    return {
        "workload": {"n_traj": n_traj, "n_steps": n_steps, "dt": DT, "excitation": "aprbs", "seed": seed},
        "engines": engines,
        "compiled_build": {"cold_build_seconds": cold_build_s, "first_call_seconds": first_call_s},
        "agreement": agreement,
        "goals": {
            "compiled_speedup_vs_baseline_ge_100": engines[2]["speedup_vs_baseline"] >= 100.0,
            "compiled_under_1s": comp_s < 1.0,
        },
        "machine": machine(load_start, numpy=np.__version__, casadi=ca.__version__, c_compiler=_c_compiler()),
    }


def _print(result: dict) -> None:
    w = result["workload"]
    print(f"plant simulation: {w['n_traj']} trajectories x {w['n_steps']} steps, {w['excitation']}, seed {w['seed']}")
    print(f"{'engine':<18}{'seconds':>10}{'speed-up':>11}{'traj-steps/s':>15}")
    for e in result["engines"]:
        print(f"{e['engine']:<18}{e['seconds']:>10.3f}{e['speedup_vs_baseline']:>10.1f}x{e['traj_steps_per_s']:>15.3g}")
    base = result["engines"][0]
    print(f"baseline: {base['note']}")
    b = result["compiled_build"]
    print(f"compiled build (code generation + C compiler, cold): {b['cold_build_seconds']:.2f} s; "
          f"first call in this process: {b['first_call_seconds']:.2f} s")  # fmt: skip
    a = result["agreement"]
    print(f"compiled vs numpy: max relative difference {a['compiled_vs_numpy_max_rel_x']:.3g} "
          f"(bit-identical: {a['compiled_vs_numpy_bit_identical']}; faults equal: {a['compiled_vs_numpy_faults_equal']}; "
          f"{a['faulted_trajectories']} trajectories faulted)")  # fmt: skip
    print(f"casadi-mapaccum vs numpy: max relative difference {a['casadi_mapaccum_vs_numpy_max_rel_x']:.3g}")
    print(f"baseline vs numpy: max relative difference {a['baseline_vs_numpy_max_rel_x']:.3g} "
          f"over {a['baseline_trajectories_compared']} trajectories")  # fmt: skip
    g = result["goals"]
    print(f"goals: compiled >= 100x baseline: {g['compiled_speedup_vs_baseline_ge_100']}; "
          f"compiled under 1 s: {g['compiled_under_1s']}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    p = parser(__doc__, DEFAULT_OUT)
    p.add_argument("--n-traj", type=int, default=100, help="trajectories (default 100)")
    p.add_argument("--n-steps", type=int, default=5000, help="steps per trajectory (default 5000)")
    p.add_argument("--baseline-traj", type=int, default=10, help="trajectories the baseline runs (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="warm runs of the compiled engine (best is kept)")
    args = p.parse_args(argv)
    check_positive(p, args, "n_traj", "n_steps", "baseline_traj", "repeats")
    result = run_benchmark(args.n_traj, args.n_steps, args.baseline_traj, args.seed, args.repeats)
    _print(result)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
