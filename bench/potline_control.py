"""Benchmark: control intervals of a 300-cell potline, one NMPC per cell on a local Ray (``alutwin control --ray``).

The plant service (stepped, 300 cells, each from its own operating state) and the twin (300 model names,
``cell-000`` ..., all registered from the shipped sparse surrogate: a line started from one champion) run on
loopback; ``--workers`` Ray actors (one CPU each) hold the cells' NMPCs (compiled NLP, warm start, safety layer).
Per interval it records:

- ``decide_s``: wall time from the measurements to every cell's decision (all the NMPCs, in parallel on the
  actors): the work a potline controller must finish inside its 600 s interval;
- ``advance_s``: the stepped plant's 60 steps and the 300 x 60 measurements over gRPC, which a real potline
  does not spend (its cells run on their own);
- the solve times of every cell (core-seconds per interval: their sum).

The first interval starts every NMPC cold (no warm start): many cells' solves reach the 1.5 s cap there and those
cells stay under their own controllers (fallback) until a later solve converges (each continues from the capped
iterate, ``MPCConfig.continue_capped``). So the run is split: ``start_up`` (every interval but the last three: the
line taking over) and ``steady`` (the last three: one interval of a line in operation, the goal's figure). ``--compile`` also times the C compile of one cell's NLP into an empty cache (a new model
pattern: once per promoted model and cell; copies of one model share it).

Goal (issue 13): one interval for 300 cells on 2 cores, p50 and max over 3 intervals, <= 120 s.

Run from the repository root::

    .venv/bin/python bench/potline_control.py                    # 300 cells, 7 intervals (4 start-up + 3 steady)
    .venv/bin/python bench/potline_control.py --cells 20 --intervals 2 --no-compile --out /tmp/p.json
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np
from _common import check_positive, load_average, machine, parser, write_results

from apps.fleet.control import PotlineConfig, ray_module, run_potline
from controller.closed_loop import DEFAULT_MODELS, SURROGATE_DIRS
from controller.config import MPCConfig, SafetyConfig

__all__ = ["main", "run_benchmark"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "potline_control.json"

_COMPILE = """
import sys, time
from controller.config import MPCConfig
from controller.models import SurrogateModel
from controller.mpc import NMPC
t0 = time.perf_counter()
NMPC(SurrogateModel.from_dir(sys.argv[1]), MPCConfig())
print(time.perf_counter() - t0)
"""


def compile_seconds(model_dir: Path) -> float:
    """Seconds to build one NMPC with its NLP compiled into an empty cache (a fresh process)."""
    with tempfile.TemporaryDirectory(prefix="alutwin-bench-cache-") as cache:
        env = {**os.environ, "ALUTWIN_CACHE": cache}
        out = subprocess.run(
            [sys.executable, "-c", _COMPILE, str(model_dir)], env=env, capture_output=True, text=True, check=True
        )
    return float(out.stdout.strip().splitlines()[-1])


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": float(np.median(values)), "max": float(max(values))}


def run_benchmark(cells: int, intervals: int, workers: int, compile_too: bool) -> dict[str, Any]:
    """Run ``intervals`` control intervals of ``cells`` cells on ``workers`` Ray actors; the results document."""
    ray_module()
    load_start = load_average()
    model_dir = DEFAULT_MODELS / SURROGATE_DIRS["sparse"]
    mpc = MPCConfig()
    config = PotlineConfig(
        cells=tuple(range(cells)),
        hours=intervals * mpc.interval_steps * 10 / 3600,
        seed=0,
        mpc=mpc,
        safety=SafetyConfig(),
        workers=workers,
        models_dir=model_dir,
        progress=False,
    )
    timings: list[dict[str, float]] = []
    t0 = time.perf_counter()
    traces, run = run_potline(config, timings=timings)
    wall = time.perf_counter() - t0
    per_interval = []
    for k, t in enumerate(timings):
        plans = [tr.plans[k] for tr in traces if len(tr.plans) > k]
        solve = [p.solve_s for p in plans]
        per_interval.append(
            {
                "interval": k,
                "decide_s": t["decide_s"],
                "advance_s": t["advance_s"],
                "solve_core_s": float(sum(solve)),
                "solve_s_p50": float(np.median(solve)),
                "solve_s_max": float(max(solve)),
                "failed_solves": sum(1 for p in plans if not p.success),
                "parallel_efficiency": float(sum(solve) / (workers * t["decide_s"])),
            }
        )
    n_steady = min(3, max(1, len(per_interval) - 1))
    warm = per_interval[-n_steady:]
    modes: dict[str, int] = {}
    for tr in traces:
        for m in tr.modes:
            modes[m] = modes.get(m, 0) + 1
    doc: dict[str, Any] = {
        "benchmark": "potline_control",
        "settings": {"cells": cells, "intervals": intervals, "workers": workers, "mpc": repr(mpc)},
        "setup_s": run["setup_s"],
        "ray_setup_s": run["ray"]["setup_s"],
        "host_setup_s": [h["setup_s"] for h in run["ray"]["hosts"]],
        "host_memory_mib": run["ray"]["memory"],  # per actor: rss_mib at the end, peak_mib
        "wall_s": wall,
        "intervals": per_interval,
        "cold": per_interval[0],
        "steady_intervals": [i["interval"] for i in warm],
        "steady": {
            "decide_s": _stats([i["decide_s"] for i in warm]),
            "advance_s": _stats([i["advance_s"] for i in warm]),
            "solve_core_s": _stats([i["solve_core_s"] for i in warm]),
            "solve_s_p50": _stats([i["solve_s_p50"] for i in warm]),
            "parallel_efficiency": _stats([i["parallel_efficiency"] for i in warm]),
            "failed_solves": sum(i["failed_solves"] for i in warm),
        },
        "all": {
            "decide_s": _stats([i["decide_s"] for i in per_interval]),
            "interval_s": _stats([i["decide_s"] + i["advance_s"] for i in per_interval]),
        },
        "modes": modes,
        "faulted_cells": [tr.controller for tr in traces if tr.fault],
        "goal_decide_s": 120.0,
    }
    if compile_too:
        doc["compile_one_model_s"] = compile_seconds(model_dir)
    doc["machine"] = machine(load_start, casadi=ca.__version__, ray=ray_module().__version__)
    return doc


def _table(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        f"{s['cells']} cells on {s['workers']} Ray actors, setup {doc['setup_s']:.1f} s",
        f"{'interval':>8} {'decide s':>9} {'advance s':>10} {'solve core-s':>13} {'solve p50':>10} "
        f"{'solve max':>10} {'failed':>7} {'efficiency':>11}",
    ]
    for i in doc["intervals"]:
        lines.append(
            f"{i['interval']:>8} {i['decide_s']:>9.1f} {i['advance_s']:>10.1f} {i['solve_core_s']:>13.1f} "
            f"{i['solve_s_p50']:>10.3f} {i['solve_s_max']:>10.3f} {i['failed_solves']:>7} "
            f"{i['parallel_efficiency']:>11.2f}"
        )
    w = doc["steady"]["decide_s"]
    a = doc["all"]["decide_s"]
    if w["p50"] is not None:
        lines.append(
            f"steady intervals {doc['steady_intervals']}: decide p50 {w['p50']:.1f} s, max {w['max']:.1f} s "
            f"(goal <= 120 s), {doc['steady']['failed_solves']} failed solves"
        )
    for h, m in zip(doc["host_setup_s"], doc["host_memory_mib"], strict=True):
        lines.append(f"host: built in {h:.1f} s, RSS {m.get('rss_mib', 0):.0f} MiB (peak {m.get('peak_mib', 0):.0f})")
    lines.append(f"all intervals: decide p50 {a['p50']:.1f} s, max {a['max']:.1f} s; modes {doc['modes']}")
    if "compile_one_model_s" in doc:
        lines.append(f"compile of one model's NLP into an empty cache: {doc['compile_one_model_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "", DEFAULT_OUT)
    p.add_argument("--cells", type=int, default=300, help="cells of the potline (default 300)")
    p.add_argument(
        "--intervals", type=int, default=7, help="control intervals: start-up, then the last 3 steady (default 7)"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ray actors (default: the CPUs)")
    p.add_argument("--no-compile", action="store_true", help="skip timing the compile of one model's NLP")
    args = p.parse_args(argv)
    check_positive(p, args, "cells", "intervals", "workers")
    doc = run_benchmark(args.cells, args.intervals, args.workers, not args.no_compile)
    print(_table(doc))
    write_results(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
