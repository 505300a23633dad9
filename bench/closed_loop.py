"""Benchmark: the closed loop of ``control.md`` on seeded 24-h scenarios, every controller side by side.

Controllers: the cell's own (``baseline``, ACD 0.05 m), the NMPC on the true equations (``oracle``), and the
NMPC on the sparse (``sparse-inputskip``, ~274 non-zero weights per member) and on the dense surrogate, both
fetched from a twin started in-process on loopback and checked against its ``Predict``. Each scenario draws
"aprbs" line-current steps from its seed and a random initial state of a cell in normal operation (inside the
windows with a margin, ``controller.closed_loop.operating_initial_state``); every controller runs on the same
one. The plant runs in-process (``plant.potline.Potline``, the same code the plant service serves; ``--grpc``
runs it through the service instead).

The dense surrogate's NLP is large (a 24-h run costs ~144 capped solves); by default it runs only in a shorter
solve-time comparison (``--dense-hours`` on ``--dense-seeds``) next to the sparse NMPC on the same scenario;
name ``dense`` in ``--controllers`` to run it on the full scenarios too.

Goals (issue 6): closed-loop cost of the sparse-surrogate NMPC <= 1.10 x the oracle NMPC's; energy per kg of
metal below the baseline's with every window held >= 99 % of the time; median solve time of the sparse
surrogate's problem >= 3x faster than the dense's, p95 <= 2 s. The MPC libraries are compiled once per machine
(cached); the build times are reported, the solve times exclude them.

Run from the repository root::

    .venv/bin/python bench/closed_loop.py                                   # 3 x 24 h + the dense comparison
    .venv/bin/python bench/closed_loop.py --hours 6 --controllers baseline,oracle,sparse --dense-hours 0 \\
        --out /tmp/cl.json --report /tmp/cl-report

Timings on a machine shared with other work are noisy; the load average at the start and the end is recorded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import casadi as ca
from _common import check_positive, load_average, machine, parser, write_results

from apps.control import control
from apps.runner import SystemConfig
from controller.closed_loop import CONTROLLERS, Scenario
from controller.config import MPCConfig

__all__ = ["main", "run_benchmark"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "closed_loop.json"


NOTES = {
    "initial_state": "control.md asks for 'a random initial state'; each scenario draws a random cell in normal "
    "operation: rejection sampling of plant.md's initial-state distribution (continuous percentages, a seeded "
    "generator of its own) until alumina, AlF3, superheat (T_bath - T_liq of the drawn composition) and ledge "
    "lie inside their windows by 0.25 %, 0.25 %, 1 degC and 250 kg (controller.closed_loop."
    "operating_initial_state). From the study's wide box (AlF3 up to 13 %, lowered only by dilution over days) "
    "no controller can hold the windows in 24 h.",
    "capped_solves": "IPOPT is capped (MPCConfig.max_iter, max_wall_s); a capped solve's last iterate is applied "
    "only when it satisfies every constraint and is no worse than its first iterate (status '... (feasible "
    "iterate)', counted in capped_solves_used); otherwise it is a failure and the safety layer applies the "
    "shifted last plan, then the cell's own controllers.",
    "oracle": "the oracle NMPC solves the same local NLP on the true equations; it is the reference of the cost "
    "ratio, not a proven lower bound (a local solution under the same caps and the same 2-h horizon).",
}


def run_benchmark(
    hours: float,
    seeds: Sequence[int],
    controllers: Sequence[str],
    *,
    grpc: bool,
    report: Path | None,
    mpc: MPCConfig,
    dense_mpc: MPCConfig | None = None,
    dense_hours: float = 0.0,
    dense_seeds: Sequence[int] = (0,),
) -> dict[str, Any]:
    """Run the scenarios (and the dense solve-time comparison when ``dense_hours > 0`` and ``dense`` is not among
    ``controllers``); return the report document plus the machine and the goals' verdicts."""
    load_start = load_average()
    dense = {"dense": dense_mpc} if dense_mpc is not None else {}
    config = SystemConfig(
        scenarios=tuple(Scenario(hours=hours, seed=s) for s in seeds),
        controllers=tuple(controllers),
        mpc=mpc,
        mpc_by_controller=dense if "dense" in controllers else {},
        in_process=not grpc,
    )
    t0 = time.perf_counter()
    out = report if report is not None else Path(f"/tmp/alutwin-closed-loop-{os.getpid()}")
    doc = control(config, out)
    doc["notes"] = dict(NOTES)
    if dense_hours > 0 and "dense" not in controllers:
        cmp_config = dataclasses.replace(
            config,
            scenarios=tuple(Scenario(hours=dense_hours, seed=s) for s in dense_seeds),
            controllers=("sparse", "dense"),
            mpc_by_controller=dense,
        )
        cmp_doc = control(cmp_config, out / "dense_comparison")
        doc["solve_time_comparison"] = solve_time_comparison(cmp_doc)
        doc["notes"]["dense"] = (
            f"the dense NMPC ran on {len(dense_seeds)} scenario(s) of {dense_hours:g} h (seeds "
            f"{list(dense_seeds)}) next to the sparse NMPC on the same scenario(s), for the solve-time comparison "
            "only; a 24-h dense run on every scenario is too slow for this benchmark"
        )
    doc["wall_s"] = time.perf_counter() - t0
    doc["report_dir"] = str(out)
    doc["goals"] = goals(doc)
    doc["machine"] = machine(load_start, casadi=ca.__version__)
    return doc


def solve_time_comparison(doc: dict[str, Any]) -> dict[str, Any]:
    """Solve times of the sparse and the dense NMPC on the same scenario(s): per controller the pooled p50/p95/max
    over every solve, iterations, capped and failed solves, and the median ratio dense / sparse."""
    out: dict[str, Any] = {"scenarios": doc["settings"]["scenarios"]}
    for name in ("sparse", "dense"):
        rows = [r for r in doc["results"] if r["controller"] == name]
        out[name] = {
            "solve_s_p50_per_scenario": [r["solve_s"]["p50"] for r in rows],
            "solve_s_p95_per_scenario": [r["solve_s"]["p95"] for r in rows],
            "solve_s_max": max(r["solve_s"]["max"] for r in rows),
            "solve_s_per_iteration_p50": [r["solve_s_per_iteration_p50"] for r in rows],
            "iterations_mean": [r["iterations"]["mean"] for r in rows],
            "capped_solves_used": sum(r["capped_solves_used"] for r in rows),
            "failures": sum((r["safety"] or {}).get("failures", 0) for r in rows),
            "statuses": [r["statuses"] for r in rows],
            "kwh_per_kg": [r["kwh_per_kg"] for r in rows],
            "cost": [r["cost"] for r in rows],
        }
    p50 = doc["headline"]["solve_p50_s"]
    out["median_ratio_dense_sparse"] = p50["dense"] / p50["sparse"]
    out["per_iteration_ratio_dense_sparse"] = (
        doc["headline"]["solve_s_per_iteration_p50"]["dense"] / doc["headline"]["solve_s_per_iteration_p50"]["sparse"]
    )
    return out


def goals(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, each with the measured figure and whether it is met."""
    head, results = doc["headline"], doc["results"]
    by = {(r["controller"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    out: dict[str, Any] = {}
    if "cost_ratio_sparse_oracle" in head:
        v = head["cost_ratio_sparse_oracle"]
        out["sparse_cost_le_1.10_oracle"] = {"value": v, "met": v <= 1.10}
    for name in ("oracle", "sparse", "dense"):
        rows = [(by[(name, s)], by[("baseline", s)]) for s in seeds if (name, s) in by and ("baseline", s) in by]
        if rows:
            energy = all(r["kwh_per_kg"] < b["kwh_per_kg"] for r, b in rows)
            windows = min(r["all_windows_pct"] for r, _ in rows)
            out[f"{name}_kwh_per_kg_below_baseline"] = {
                "value": [r["kwh_per_kg"] / b["kwh_per_kg"] for r, b in rows],
                "met": energy,
            }
            out[f"{name}_every_window_ge_99pct"] = {"value": windows, "met": windows >= 99.0}
    p50 = head.get("solve_p50_s", {})
    if "sparse" in p50 and "dense" in p50:
        ratio = p50["dense"] / p50["sparse"]
        out["sparse_median_solve_3x_faster_than_dense"] = {"value": ratio, "met": ratio >= 3.0}
    elif "solve_time_comparison" in doc:
        ratio = doc["solve_time_comparison"]["median_ratio_dense_sparse"]
        out["sparse_median_solve_3x_faster_than_dense"] = {
            "value": ratio,
            "met": ratio >= 3.0,
            "note": "from the shorter dense comparison (see notes.dense)",
        }
    p95 = [r["solve_s"]["p95"] for r in results if r["controller"] == "sparse"]
    if p95:
        out["sparse_p95_solve_le_2s"] = {"value": max(p95), "met": max(p95) <= 2.0}
    return out


def _print(doc: dict[str, Any]) -> None:
    names = [n for n in doc["results"][0]["windows"]]
    print(
        f"{'seed':>4} {'controller':<10} {'kWh':>8} {'kWh/kg':>8} {'cost':>9} "
        + " ".join(f"{n[:10]:>10}" for n in names)
        + f" {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'capped':>6} {'fail':>5} {'fallbk':>6}"
    )
    for r in doc["results"]:
        sf = r["safety"] or {}
        print(
            f"{r['seed']:>4} {r['controller']:<10} {r['energy_kwh']:>8.1f} {r['kwh_per_kg']:>8.4f} {r['cost']:>9.1f} "
            + " ".join(f"{r['windows'][n]['pct_time_inside']:>9.2f}%" for n in names)
            + f" {r['solve_s']['p50']:>7.3f} {r['solve_s']['p95']:>7.3f} {r['solve_s']['max']:>7.3f} "
            f"{r['capped_solves_used']:>6} {sf.get('failures', 0):>5} {sf.get('fallback_intervals', 0):>6}"
        )
    cmp = doc.get("solve_time_comparison")
    if cmp:
        for name in ("sparse", "dense"):
            c = cmp[name]
            print(
                f"solve-time comparison {name}: p50 {c['solve_s_p50_per_scenario']} p95 {c['solve_s_p95_per_scenario']}"
                f" max {c['solve_s_max']:.3f} capped {c['capped_solves_used']} failures {c['failures']}"
            )
    for name, g in doc["goals"].items():
        value = g["value"]
        shown = [round(v, 4) for v in value] if isinstance(value, list) else round(value, 4)
        print(f"goal {name}: {shown} -> {'met' if g['met'] else 'MISSED'}")
    print(f"wall time {doc['wall_s']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    p = parser(__doc__, DEFAULT_OUT)
    p.add_argument("--hours", type=float, default=24.0, help="plant hours per scenario (default 24)")
    p.add_argument("--scenarios", type=int, default=3, help="number of scenarios, seeds 0.. (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first scenario (default 0)")
    default_controllers = ",".join(c for c in CONTROLLERS if c != "dense")
    p.add_argument(
        "--controllers", default=default_controllers, help=f"comma-separated (default {default_controllers})"
    )
    p.add_argument(
        "--dense-hours", type=float, default=6.0, help="hours of the sparse/dense solve-time comparison (0: none)"
    )
    p.add_argument("--dense-seeds", default="0", help="seeds of the sparse/dense comparison (default 0)")
    p.add_argument("--grpc", action="store_true", help="run the plant through the plant service")
    p.add_argument("--horizon", type=int, default=MPCConfig().horizon, help="MPC horizon, control intervals")
    p.add_argument("--max-wall-s", type=float, default=MPCConfig().max_wall_s, help="IPOPT wall-time limit")
    p.add_argument(
        "--dense-max-wall-s",
        type=float,
        default=None,
        help="IPOPT wall-time limit of the dense NMPC (default: --max-wall-s, the same as the others). With 1.5 s "
        "every dense solve is cut off; with 10 s, 33 of its first 39 solves on seed 0 still failed (27 at IPOPT's "
        "60 iterations, ~9 s each)",
    )
    p.add_argument("--report", type=Path, default=None, help="also keep the markdown/PNG report in this folder")
    args = p.parse_args(argv)
    if args.dense_max_wall_s is None:
        args.dense_max_wall_s = args.max_wall_s
    check_positive(p, args, "scenarios", "hours", "horizon", "max_wall_s", "dense_max_wall_s")
    seeds = range(args.first_seed, args.first_seed + args.scenarios)
    mpc = dataclasses.replace(MPCConfig(), horizon=args.horizon, max_wall_s=args.max_wall_s)
    try:
        doc = run_benchmark(
            args.hours,
            seeds,
            args.controllers.split(","),
            grpc=args.grpc,
            report=args.report,
            mpc=mpc,
            dense_mpc=None
            if args.dense_max_wall_s == args.max_wall_s
            else dataclasses.replace(mpc, max_wall_s=args.dense_max_wall_s),
            dense_hours=args.dense_hours,
            dense_seeds=tuple(int(x) for x in args.dense_seeds.split(",") if x.strip()),
        )
    except ValueError as exc:
        p.error(str(exc))
    _print(doc)
    write_results(doc, args.out, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
