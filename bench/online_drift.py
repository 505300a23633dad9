"""Benchmark: the twin follows a drifting plant through online re-fits, and refuses a poisoned sensor.

Three runs of :func:`apps.online_demo.run_scenario` (plant service, twin, bridge and re-fit worker in one
process on loopback, plant time accelerated; 4 cells, "aprbs" line current, the committed ``sparse-inputskip``
model as the seed):

(a) **drift**: the bath-to-ledge heat-transfer coefficient of every cell rises by 20 % at 8 h; 18 h in all.
    Acceptance: the twin's 1-h-ahead AN-RFMSE returns to within 1.2x its pre-drift level (predictions started
    in [drift - 2 h, drift - 1 h)) within 6 h of plant time, while the never re-fitted seed version stays
    worse; each re-fit takes at most 30 s on 2 cores.
(b) **poisoned, gate only**: cell 2's bath-temperature sensor reads 5 degC high from 3 h (no drift), the
    worker does not screen its data: every challenger trained on the poisoned cell must be rejected.
(c) **poisoned, screened**: the same with the screen on: the offset is found and latched, cell 2 is left out.

The error curves score each prediction against the measured future of the healthy cells (the plant has no
measurement noise). Prints a table and writes ``bench/results/online_drift.json``::

    .venv/bin/python bench/online_drift.py
    .venv/bin/python bench/online_drift.py --only drift --out /tmp/x.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import check_positive, load_average, machine, parser, write_results

from apps.online_demo import ScenarioConfig, drift_config, json_safe, recovery, run_scenario, write_report
from plant.scenarios import ScenarioEvent

HERE = Path(__file__).resolve().parent
DRIFT_H = 8.0


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:<22} cycles {s['cycles']:>2}  promoted {s['promotions']:>2}  rejected {s['rejections']:>2}  "
        f"skipped {s['skipped']:>2}  re-fit max {s['refit_s_max'] or 0:5.2f} s  cycle max {s['cycle_s_max'] or 0:5.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the table and write the JSON results; 0 when every acceptance is met."""
    p = parser(__doc__, HERE / "results" / "online_drift.json")
    p.add_argument("--report", type=Path, help="also write each run's plot and README under this folder")
    p.add_argument("--only", choices=("drift", "poison"), help="run only the drift or only the poison runs")
    p.add_argument("--hours", type=float, default=18.0, help="plant hours of the drift run (default 18)")
    args = p.parse_args(argv)
    check_positive(p, args, "hours")
    if args.only != "poison" and not args.hours > DRIFT_H:
        p.error(f"--hours must be above the drift's {DRIFT_H:g} h, got {args.hours}")

    offset = ScenarioEvent("offset_sensor", 3 * 3600.0, state="T_bath", offset=5.0, cells=(2,))
    runs: dict[str, ScenarioConfig] = {}
    if args.only in (None, "drift"):
        runs["drift"] = drift_config(args.hours, DRIFT_H)
    if args.only in (None, "poison"):
        runs["poison_gate_only"] = ScenarioConfig(hours=9.0, events=(offset,), screen=False)
        runs["poison_screened"] = ScenarioConfig(hours=9.0, events=(offset,), screen=True)
    load_start = load_average()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="alutwin-bench-online-") as tmp:
        for name, cfg in runs.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            res = run_scenario(cfg, Path(tmp) / name, progress=True)
            summary = res.summary()
            if name == "drift":
                summary["acceptance"] = recovery(res, DRIFT_H)
            if args.report is not None:
                write_report(res, args.report / name, drift_h=DRIFT_H if name == "drift" else None, title=name)
            del summary["curve"]["t_h"]  # the curve's times are every 10 min from 0
            results[name] = summary
    print()
    for name, s in results.items():
        print(_row(name, s))
    ok = True
    if "drift" in results:
        a = results["drift"]["acceptance"]
        hourly = ", ".join(f"{v:.4f}" for v in a["hourly_after_drift"])
        base = ", ".join(f"{v:.4f}" for v in a["hourly_after_drift_no_refit"])
        print(
            f"\ndrift at {DRIFT_H:g} h: pre-drift 1-h AN-RFMSE {a['pre_level']:.4f} (no re-fit {a['pre_level_no_refit']:.4f})"
        )
        print(f"  twin, hourly after the drift:      {hourly}")
        print(f"  no re-fit, hourly after the drift: {base}")
        print(
            f"  recovered to <= {a['factor']}x after {a['recovered_h']} h (within 6 h: {a['recovered_within_6h']}); "
            f"no re-fit stays worse: {a['no_refit_stays_worse']}; longest re-fit {results['drift']['refit_s_max']:.2f} s"
        )
        ok &= a["recovered_within_6h"] and a["no_refit_stays_worse"] and results["drift"]["refit_s_max"] <= 30.0
    if "poison_gate_only" in results:
        gate_only = results["poison_gate_only"]["decisions"]
        trained = [d for d in gate_only if d["trained_until_h"] is not None and d["trained_until_h"] > 3.0]
        bad = [d for d in trained if d["event"] == "promoted"]
        print(
            f"\npoisoned, gate only: {len(trained)} challengers trained on data of the poisoned cell, "
            f"{len(bad)} of them promoted"
        )
        faults = [f for d in results["poison_screened"]["decisions"] for f in d["faults"]]
        print(f"poisoned, screened: faults found {[(f['cell'], f['kind'], f['state'], f['step']) for f in faults]}")
        ok &= not bad
    doc = {
        "benchmark": "online_drift",
        "machine": machine(load_start),
        "acceptance_met": bool(ok),
        "runs": results,
    }
    write_results(json_safe(doc), args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
