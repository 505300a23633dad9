"""``alutwin demo`` (``make demo``): the whole system on loopback, for a few hours of plant time.

It starts, in one process and bound to 127.0.0.1 only:

1. the **plant service** (one cell, a seeded random initial state and line-current steps, stepped by the loop);
2. the **twin**, seeded with the packaged sparse surrogate (``identification/pretrained/sparse-inputskip``) as the
   champion of ``cell-sparse``, with its historian;
3. the **bridge**, streaming the plant's measurements into the twin's historian, and the **online re-fit
   worker**, which re-fits the champion on those data every ``--refit-hours`` of plant time and promotes a
   challenger only through its gate;
4. the **NMPC** on the surrogate the twin serves (fetched with ExportModel, checked against Predict, rebuilt
   when the worker promotes a new champion), behind its safety layer, controlling the cell through the plant
   service.

The same scenario is also run under the cell's own controllers (the baseline, in process), and the report
(``report.md``, ``report.json``, trajectory plots with the windows shaded, and ``online.md`` with the worker's
decisions) is written to ``--out`` (default: a new folder in the working directory). The command's parser is in
:mod:`apps.commands`. Everything is shut down at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alutwin.cli import command_output_dir
from alutwin.cli import main as cli_main
from controller.closed_loop import DEFAULT_MODELS, SURROGATE_DIRS, Scenario, Trace, run_loop
from controller.config import MPCConfig, SafetyConfig
from controller.models import TwinModel
from controller.mpc import NMPC
from controller.plantlink import GrpcPlant, LocalPlant
from controller.report import write_report
from controller.safety import SafeController
from plant.client import PlantClient
from plant.service import create_server as create_plant_server
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.historian import BridgeConfig, run_bridge
from twin.online import OnlineWorker, WorkerConfig
from twin.serving import create_server as create_twin_server

__all__ = ["DemoConfig", "main", "run_demo"]

log = logging.getLogger(__name__)

MODEL = "cell-sparse"
"""The twin's name for the surrogate the demo's MPC follows."""

_HOUR = 3600.0


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class DemoConfig:
    """What :func:`run_demo` runs.

    Parameters
    ----------
    hours : float
        Plant time of the scenario (default 4 h: 24 control intervals of 10 min).
    seed : int
        Seeds the scenario (initial state, current steps).
    refit_hours : float
        The online worker's cadence, in plant time.
    models_dir : Path
        Folder holding the committed surrogates.
    progress : bool
        Progress bars (drawn on a terminal only) and the worker's messages on stderr.
    jit : bool
        Compile the NMPC's problem to C (faster solves; the first build on a machine is slow, later ones come
        from the cache). Tests turn it off.
    """

    def __init__(
        self,
        hours: float = 4.0,
        seed: int = 0,
        refit_hours: float = 1.0,
        models_dir: Path = DEFAULT_MODELS,
        progress: bool = True,
        jit: bool = True,
    ) -> None:
        self.hours = _positive("hours", hours)
        self.refit_hours = _positive("refit_hours", refit_hours)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.models_dir = Path(models_dir)
        if not (self.models_dir / SURROGATE_DIRS["sparse"]).is_dir():
            raise ValueError(f"models_dir: no model directory {self.models_dir / SURROGATE_DIRS['sparse']}")
        self.progress = bool(progress)
        self.jit = bool(jit)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hours": self.hours,
            "seed": self.seed,
            "refit_hours": self.refit_hours,
            "models_dir": str(self.models_dir),
            "jit": self.jit,
        }


def _online_markdown(records: Sequence[Any], worker_error: str) -> str:
    lines = ["# The online re-fit worker during the demo", ""]
    if worker_error:
        lines += [f"The worker stopped with an error: {worker_error}", ""]
    if not records:
        lines.append("No re-fit cycle ran (the worker waits for enough data: see the cadence and windows).")
        return "\n".join(lines) + "\n"
    lines += ["| plant h | decision | version | reason |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.plant_time_s / _HOUR:.2f} | {r.event} | {r.challenger_version or ''} | {r.reason} |")
    return "\n".join(lines) + "\n"


def run_demo(config: DemoConfig, out: str | Path) -> dict[str, Any]:
    """Run the system (see the module's docstring) and write the report into ``out``.

    Returns
    -------
    The report's document (as in ``out/report.json``), with ``online`` (the worker's decisions) added.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(hours=config.hours, seed=config.seed)
    # The demo runs plant time much faster than real time: a compile on the rebuild thread would span hours of
    # its plant time, so a promoted model is compiled between two solves instead (and the safety layer covers
    # the pause). At real time a compile takes a small part of one control interval.
    mpc_config = MPCConfig(jit=config.jit, compile_in_background=False)
    safety = SafetyConfig()
    token = secrets.token_hex(16)
    traces: list[Trace] = []
    records: list[Any] = []
    worker_error: list[str] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alutwin-demo-")))
        # 1. the baseline, in process: the cell's own controllers on the same scenario
        traces.append(
            run_loop(
                LocalPlant(scenario.potline()),
                None,
                scenario.n_steps,
                interval_steps=mpc_config.interval_steps,
                name="baseline",
                scenario=scenario,
                progress=config.progress,
            )
        )
        traces[-1].controller = "baseline"
        # 2. the twin with its historian, seeded with the sparse surrogate
        twin_config = TwinConfig(store=work / "store", port=0, token=token, grace_s=0.0)
        twin, _ = create_twin_server(twin_config)
        twin.start()
        stack.callback(twin.stop, 0)
        client = TwinClient(twin.address, token=token, timeout=60.0)
        stack.callback(client.close)
        client.register(MODEL, config.models_dir / SURROGATE_DIRS["sparse"], set_alias="champion")
        # 3. the plant service, the bridge into the historian, and the online worker
        plant, _ = create_plant_server(scenario.plant_config(), potline=scenario.potline())
        plant.start()
        stack.callback(plant.stop, 0)
        plant_client = PlantClient(plant.address, timeout=60.0)
        stack.callback(plant_client.close)
        stop = threading.Event()
        stack.callback(stop.set)
        bridge = threading.Thread(
            target=run_bridge,
            args=(BridgeConfig(plant=plant.address, twin=twin.address, flush_s=0.1),),
            kwargs={"token": token, "stop": stop},
            name="demo-bridge",
            daemon=True,
        )
        bridge.start()
        stack.callback(bridge.join, 10.0)
        historian = twin_config.historian_path
        if historian is None:
            raise RuntimeError("the demo's twin runs without a historian")
        worker = OnlineWorker(
            WorkerConfig(
                twin=twin.address,
                historian=historian,
                model=MODEL,
                decisions=out / "decisions.jsonl",
                state=work / "worker.json",
                token=token,
                every_plant_s=config.refit_hours * _HOUR,
                replay_s=config.hours * _HOUR,
                holdout_s=1.5 * _HOUR,  # six 1-h rollouts 30 min apart to score champion and challenger
                min_train_steps=180,
                poll_s=1.0,
            ),
            progress=False,
            out=sys.stderr if config.progress else None,
        )
        stack.callback(worker.close)

        def work_loop() -> None:
            try:
                worker.run()
            except Exception as exc:  # reported in online.md; the control loop goes on
                log.exception("the online worker stopped")
                worker_error.append(str(exc))

        worker_thread = threading.Thread(target=work_loop, name="demo-worker", daemon=True)
        worker_thread.start()
        stack.callback(worker_thread.join, 30.0)
        stack.callback(worker.stop)
        # 4. the NMPC on the served surrogate, following the champion
        model = TwinModel(client, MODEL)
        stack.callback(model.close)
        mpc = NMPC(model, mpc_config)
        trace = run_loop(
            GrpcPlant(plant_client),
            SafeController(mpc, safety),
            scenario.n_steps,
            interval_steps=mpc_config.interval_steps,
            name="sparse NMPC (twin)",
            scenario=scenario,
            watchdog_s=safety.watchdog_s,
            progress=config.progress,
        )
        trace.controller = "sparse"
        trace.model = {**mpc.model.describe(), **mpc.describe_problem()}
        traces.append(trace)
        worker.stop()
        worker_thread.join(60.0)
        records = list(worker.records)
    settings = {
        "demo": config.as_dict(),
        "scenarios": [asdict(scenario)],
        "controllers": ["baseline", "sparse"],
        "mpc": {**asdict(mpc_config), "weights": asdict(mpc_config.weights)},
        "safety": asdict(safety),
        "plant": "plant service (gRPC, loopback); baseline in process",
        "wall_s": time.perf_counter() - t0,
    }
    doc = write_report(traces, out, settings=settings, weights=mpc_config.weights)
    (out / "online.md").write_text(_online_markdown(records, worker_error[0] if worker_error else ""))
    doc["online"] = [
        {"plant_h": r.plant_time_s / _HOUR, "event": r.event, "version": r.challenger_version, "reason": r.reason}
        for r in records
    ]
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str, allow_nan=True) + "\n")
    return doc


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _run(args: argparse.Namespace) -> int:
    models = DEFAULT_MODELS if args.models is None else args.models
    # not show_progress(args): the worker's messages go to a log too; the bars draw only on a terminal anyway
    config = DemoConfig(args.hours, args.seed, args.refit_hours, models, progress=not args.quiet)
    out = command_output_dir(args.out, "demo-output")
    t0 = time.perf_counter()
    doc = run_demo(config, out)
    head = doc.get("headline", {})
    print(f"wrote {out}/report.md (and plots, online.md) in {time.perf_counter() - t0:.0f} s")
    for seed, figures in head.get("per_seed", {}).items():
        ratios = ", ".join(f"{k.removeprefix('kwh_per_kg_')} {_fmt(v)}" for k, v in figures.items())
        print(f"seed {seed}: kWh/kg {ratios}")
    if head.get("solve_p50_s"):
        print("NMPC solve p50: " + ", ".join(f"{k} {_fmt(v)} s" for k, v in head["solve_p50_s"].items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``alutwin demo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
