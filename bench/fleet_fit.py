"""Benchmark: ``alutwin fleet fit`` of 16 cells' small ensembles on a local Ray vs one cell after another.

Protocol: 16 cells, each its own data set (16 "aprbs" trajectories of 3000 steps: 48 000 samples) and its own
sparse-inputskip ensemble of 4 members (40 epochs, then two pruning rounds of 20 re-training epochs), fused C
kernel: about 5 s a cell on one CPU. Rows, side by side in one run, in this order:

1. one after another, 1 CPU per cell (``fit_fleet(sequential=True)`` with ``threads=1``: each cell exactly the
   work of one Ray task);
2. one after another, each cell's members spread over all CPUs (``threads`` = the CPUs): the fused kernel's own
   parallelism, what one cell after another gets at best;
3. Ray, local, one task of 1 CPU per cell on ``ray.init(num_cpus=CPUs)``; the seconds of ``ray.init`` are
   timed apart and added to the row in a second speed-up.

Every cell's weights must be bit-identical in the three rows (the same code on the same seeds).

Usage: ``python bench/fleet_fit.py [--cells 16] [--members 4] [--epochs 40]``; writes bench/results/fleet_fit.json.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import check_positive, load_average, machine, parser, write_results

from apps.fleet.fit import RAY_MISSING, CellResult, FleetFitConfig, fit_fleet, ray_available
from identification.kinds import KINDS

RESULTS = Path(__file__).resolve().parent / "results" / "fleet_fit.json"
GOAL = 1.7
"""Ray over one cell after another on 1 CPU each (row 3 over row 1, Ray's startup excluded), on 2 cores."""


def _timed(config: FleetFitConfig, **kwargs) -> tuple[float, list[CellResult]]:
    t = time.perf_counter()
    results = fit_fleet(config, **kwargs)
    seconds = time.perf_counter() - t
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError("cells failed: " + "; ".join(failed))
    return seconds, results


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON results and return them."""
    p = parser(__doc__, RESULTS)
    p.add_argument("--cells", type=int, default=16)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--train", type=int, default=16, help="training trajectories per cell (default 16)")
    p.add_argument("--steps", type=int, default=3000, help="steps per trajectory (default 3000)")
    args = p.parse_args(argv)
    check_positive(p, args, "cells", "members", "epochs", "train", "steps")
    if not ray_available():
        p.error(RAY_MISSING)
    import ray

    load_start = load_average()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    one = FleetFitConfig(
        cells=args.cells, members=args.members, epochs=args.epochs, n_traj=args.train, n_steps=args.steps, seed=0
    )
    rows = []
    t_seq1, seq1 = _timed(one, sequential=True)
    rows.append(("one after another, 1 CPU per cell", t_seq1, seq1))
    t_seqn, seqn = _timed(replace(one, threads=cpus), sequential=True)
    rows.append((f"one after another, members over {cpus} CPUs", t_seqn, seqn))
    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_start = time.perf_counter() - t
    try:
        t_ray, on_ray = _timed(one)
    finally:
        ray.shutdown()
    rows.append((f"Ray, local, {cpus} tasks of 1 CPU", t_ray, on_ray))

    identical = all(
        a.files is not None and b.files is not None and a.files[1] == b.files[1]
        for _, _, results in rows[1:]
        for a, b in zip(seq1, results, strict=True)
    )
    base, best_seq = t_seq1, min(t_seq1, t_seqn)
    samples = args.train * args.steps
    spec = KINDS[one.kind]
    print(
        f"\nFleet fit of {args.cells} cells: sparse-inputskip x{args.members}, {args.epochs} epochs + "
        f"{len(spec.prune_thresholds)} x {spec.retrain_epochs} re-training, {samples} samples per cell, on {cpus} CPUs"
    )
    print(f"{'how':<40} {'seconds':>8} {'s/cell':>7} {'fit s/cell (median)':>20} {'speed-up':>9}")
    for name, sec, results in rows:
        median = statistics.median(r.seconds for r in results)
        print(f"{name:<40} {sec:>8.1f} {sec / args.cells:>7.2f} {median:>20.2f} {base / sec:>8.2f}x")
    print(f"{'Ray startup (ray.init)':<40} {t_start:>8.1f}")
    print(
        f"Ray vs 1 CPU per cell one after another: {t_seq1 / t_ray:.2f}x ({t_seq1 / (t_ray + t_start):.2f}x with Ray's "
        f"startup); vs members over {cpus} CPUs: {t_seqn / t_ray:.2f}x ({t_seqn / (t_ray + t_start):.2f}x)"
    )
    print(f"weights bit-identical in all rows: {identical}")
    result = {
        "benchmark": "fleet_fit",
        "machine": machine(load_start, numpy=np.__version__, torch=torch.__version__, ray=ray.__version__),
        "protocol": {
            "cells": args.cells,
            "kind": one.kind,
            "members": args.members,
            "epochs": args.epochs,
            "pruning_rounds": len(spec.prune_thresholds),
            "retrain_epochs": spec.retrain_epochs,
            "train_trajectories": args.train,
            "steps": args.steps,
            "samples_per_cell": samples,
            "cpus": cpus,
        },
        "rows": [
            {
                "how": name,
                "seconds": sec,
                "seconds_per_cell": sec / args.cells,
                "fit_seconds_per_cell_median": statistics.median(r.seconds for r in results),
                "speedup_vs_one_cpu_one_after_another": base / sec,
            }
            for name, sec, results in rows
        ],
        "ray_startup_seconds": t_start,
        "speedup": {
            "ray_vs_one_cpu_sequential": t_seq1 / t_ray,
            "ray_with_startup_vs_one_cpu_sequential": t_seq1 / (t_ray + t_start),
            "ray_vs_members_over_all_cpus_sequential": t_seqn / t_ray,
            "ray_with_startup_vs_members_over_all_cpus_sequential": t_seqn / (t_ray + t_start),
            "ray_vs_best_sequential": best_seq / t_ray,
        },
        "weights_identical": identical,
        "goals": {"speedup_at_least": GOAL, "weights_identical": True},
        "met": {"speedup": t_seq1 / t_ray >= GOAL, "weights_identical": identical},
    }
    write_results(result, args.out)
    return result


if __name__ == "__main__":
    main()
