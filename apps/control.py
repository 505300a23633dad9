"""``alutwin control``: run the closed loop of ``control.md`` and write its report.

By default it starts the twin and the plant on loopback; with ``--twin`` and ``--plant`` it controls a twin and a
plant that run elsewhere (:class:`apps.runner.Remote`: TLS roots and tokens), one controller per ``--cells`` cell.
With ``--ray`` it runs a potline: one sparse-surrogate NMPC per cell on Ray actors (:mod:`apps.fleet.control`),
reported per cell and for the line (:mod:`controller.potline_report`).

Also importable: :func:`control` runs a :class:`~apps.runner.SystemConfig` and writes the report;
:func:`main` is the command line (``python -m apps.control --hours 3 --out demo-output/control``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alutwin.cli import command_output_dir, show_progress
from alutwin.cli import main as cli_main
from apps.fleet.control import PotlineConfig, ray_module, run_potline
from apps.runner import Remote, SystemConfig, run_system
from controller.closed_loop import CONTROLLERS, DEFAULT_MODELS, SURROGATE_DIRS, TWIN_MODELS, Scenario, Trace
from controller.config import ControllerConfig, MPCConfig, SafetyConfig
from controller.potline_report import write_potline_report
from controller.report import write_report

__all__ = ["build_config", "build_potline_config", "control", "main", "potline"]

log = logging.getLogger(__name__)

_STEP_S = 10.0


def control(config: SystemConfig, out: str | Path) -> dict[str, Any]:
    """Run every controller of ``config`` on every scenario and write the report into ``out``.

    Returns
    -------
    The report's document (``settings``, ``headline``, ``results``), as written to ``out/report.json``.
    """
    t0 = time.perf_counter()
    traces = run_system(config)
    settings = {
        "scenarios": _scenarios_setting(config),
        "controllers": list(config.controllers),
        "mpc": {**dataclasses.asdict(config.mpc), "weights": dataclasses.asdict(config.mpc.weights)},
        "mpc_by_controller": {
            name: {key: value for key, value in dataclasses.asdict(cfg).items() if value != getattr(config.mpc, key)}
            for name, cfg in config.mpc_by_controller.items()
        },
        "safety": dataclasses.asdict(config.safety),
        "plant": _plant_setting(config, traces),
        "twin": _twin_setting(config),
        "models_dir": str(config.models_dir) if config.twin is None else None,
        "wall_s": time.perf_counter() - t0,
    }
    return write_report(traces, out, settings=settings, weights=config.mpc.weights)


def _scenarios_setting(config: SystemConfig) -> list[dict[str, Any]]:
    if config.plant is None:
        return [dataclasses.asdict(s) for s in config.scenarios]
    own = "the plant's own (its seed, current profile and cells), listed as seed 0"
    return [{"hours": config.scenarios[0].hours, "scenario": own}]


def _plant_setting(config: SystemConfig, traces: Sequence[Trace]) -> str | dict[str, Any]:
    if config.plant is None:
        return "in-process Potline" if config.in_process else "plant service (gRPC, loopback)"
    out = {
        **config.plant.describe(),
        "cells": dict(zip(config.controllers, config.cells, strict=True)),
        "start_step": traces[0].start_step if traces else None,
    }
    missed = {t.controller: t.missed_steps for t in traces if t.missed_steps}
    if missed:
        out["missed_steps"] = missed
    return out


def _twin_setting(config: SystemConfig) -> str | dict[str, Any] | None:
    if not any(c in SURROGATE_DIRS for c in config.controllers):
        return None  # no controller uses the twin
    if config.twin is None:
        return "twin service (gRPC, loopback, a temporary store seeded from models_dir)"
    return {**config.twin.describe(), "models": {c: TWIN_MODELS[c] for c in config.controllers if c in TWIN_MODELS}}


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--{name} must be a positive number, got {value!r}")


def build_config(args: argparse.Namespace) -> SystemConfig:
    """The :class:`SystemConfig` the command-line arguments describe: the MPC and safety settings of the
    ``--mpc-config`` file (or the defaults), with the interval, horizon, JIT and watchdog flags given in their place;
    a twin and a plant elsewhere with ``--twin`` and ``--plant`` (their tokens read from the environment variables
    ``--twin-token-env`` and ``--plant-token-env`` name, an unset one meaning no token; their TLS roots from
    ``--twin-tls-ca`` and ``--plant-tls-ca``), one controller per cell of ``--cells``.

    Raises
    ------
    ValueError
        Naming a bad argument, or every bad setting of the file (:class:`alutwin.config.ConfigError`).
    """
    _positive("hours", args.hours)
    mpc, safety = _controller_settings(args)
    try:
        seeds = tuple(int(s) for s in str(args.seeds).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers, got {args.seeds!r}") from None
    if not seeds:
        raise ValueError("--seeds must name at least one seed")
    controllers = tuple(c.strip() for c in str(args.controllers).split(",") if c.strip())
    twin, plant = _remote(args, "twin"), _remote(args, "plant")
    cells = _cells(args, controllers, plant)
    if plant is not None:
        given = [f for f, on in (("--in-process", args.in_process), ("--noise", args.noise)) if on]
        given += ["--seeds"] if seeds != (0,) else []
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise ValueError(
                f"{' and '.join(given)} {verb} for a plant started here; with --plant the scenario is the plant's own"
            )
    if twin is not None and not any(c in SURROGATE_DIRS for c in controllers):
        log.warning("--twin is not used: none of the controllers %s predicts with the twin", ",".join(controllers))
    return SystemConfig(
        scenarios=tuple(Scenario(hours=args.hours, seed=s, noise=args.noise) for s in seeds),
        controllers=controllers,
        mpc=mpc,
        safety=safety,
        models_dir=DEFAULT_MODELS if args.models is None else Path(args.models),
        in_process=args.in_process,
        progress=show_progress(args),
        twin=twin,
        plant=plant,
        cells=cells,
    )


def _controller_settings(args: argparse.Namespace) -> tuple[MPCConfig, SafetyConfig]:
    """The MPC and safety settings: the ``--mpc-config`` file's (or the defaults), with the interval, horizon,
    JIT and watchdog flags given in their place."""
    base = ControllerConfig() if args.mpc_config is None else ControllerConfig.from_yaml(args.mpc_config)
    interval_min = base.mpc.interval_steps * _STEP_S / 60.0 if args.interval_min is None else args.interval_min
    horizon_h = (
        base.mpc.horizon * base.mpc.interval_steps * _STEP_S / 3600.0 if args.horizon_h is None else args.horizon_h
    )
    _positive("interval-min", interval_min)
    _positive("horizon-h", horizon_h)
    steps = interval_min * 60.0 / _STEP_S
    if abs(steps - round(steps)) > 1e-9:
        raise ValueError(f"--interval-min must be a whole number of 10 s steps, got {interval_min!r}")
    intervals = horizon_h * 60.0 / interval_min
    if abs(intervals - round(intervals)) > 1e-9 or round(intervals) < 1:
        origin = "" if args.horizon_h is not None or args.mpc_config is None else f", from {args.mpc_config}"
        raise ValueError(
            f"--horizon-h ({horizon_h!r}{origin}) must be a whole multiple of --interval-min ({interval_min!r} min)"
        )
    jit = base.mpc.jit and not args.no_jit
    mpc = dataclasses.replace(base.mpc, interval_steps=round(steps), horizon=round(intervals), jit=jit)
    safety = base.safety if args.watchdog_s is None else dataclasses.replace(base.safety, watchdog_s=args.watchdog_s)
    return mpc, safety


def _remote(args: argparse.Namespace, service: str) -> Remote | None:
    """``--twin`` or ``--plant`` with its TLS roots and its token, read here (None: start our own)."""
    address = getattr(args, service, None)
    tls_ca = getattr(args, f"{service}_tls_ca", None)
    if address is None:
        if tls_ca is not None:
            raise ValueError(f"--{service}-tls-ca needs --{service}")
        return None
    env = getattr(args, f"{service}_token_env", None)
    token = (os.environ.get(env) or None) if env else None  # an unset variable: no token
    try:
        roots = Path(tls_ca).read_bytes() if tls_ca else None
    except OSError as exc:
        raise ValueError(f"--{service}-tls-ca {tls_ca}: cannot read it ({exc.strerror or exc})") from None
    try:
        return Remote(address, token=token, root_certificates=roots)
    except ValueError as exc:
        raise ValueError(f"--{service}: {exc}") from None


def _cells(args: argparse.Namespace, controllers: tuple[str, ...], plant: Remote | None) -> tuple[int, ...]:
    """``--cells``: one cell of the remote plant per controller."""
    text = str(getattr(args, "cells", "0"))
    try:
        cells = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"--cells must be a comma-separated list of cell indices, got {text!r}") from None
    if plant is None:
        if cells != (0,):
            raise ValueError(f"--cells {text} names cells of a remote plant: it needs --plant")
        return cells
    if not cells or min(cells) < 0 or len(set(cells)) != len(cells):
        raise ValueError(f"--cells must name distinct cell indices >= 0, got {text!r}")
    if len(cells) != len(controllers):
        example = ",".join(str(i) for i in range(len(controllers)))
        raise ValueError(
            f"--cells names {len(cells)} cell{'s' if len(cells) != 1 else ''} for {len(controllers)} controllers "
            f"({','.join(controllers)}): give one cell per controller, e.g. --cells {example}"
        )
    return cells


def build_potline_config(args: argparse.Namespace) -> PotlineConfig:
    """The :class:`~apps.fleet.control.PotlineConfig` of ``alutwin control --ray``: ``--cells N`` (the cells
    0..N-1) or a list of cells, one sparse-surrogate NMPC per cell on the twin's model of that cell, the MPC and
    safety settings as :func:`build_config` reads them.

    Raises
    ------
    ValueError
        Naming a bad argument or a flag that does not go with ``--ray``.
    """
    _positive("hours", args.hours)
    mpc, safety = _controller_settings(args)
    controllers = str(args.controllers).replace(" ", "")
    if controllers not in (",".join(CONTROLLERS), "sparse"):
        raise ValueError(
            "--ray runs the sparse-surrogate NMPC on every cell (the twin's model of that cell): "
            f"leave out --controllers (got {args.controllers!r})"
        )
    for flag, on in (("--in-process", args.in_process), ("--noise", args.noise)):
        if on:
            raise ValueError(f"{flag} does not go with --ray (the potline runs in its plant service)")
    try:
        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be an integer with --ray, got {args.seeds!r}") from None
    if len(seeds) != 1 or seeds[0] < 0:
        raise ValueError(f"--ray runs one potline scenario: give one --seeds value >= 0, got {args.seeds!r}")
    twin, plant = _remote(args, "twin"), _remote(args, "plant")
    if plant is not None and seeds != [0]:
        raise ValueError("--seeds is for a plant started here; with --plant the scenario is the plant's own")
    text = str(args.cells).strip()
    try:
        if "," in text:
            cells = tuple(int(c) for c in text.split(",") if c.strip())
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            cells = tuple(range(n))
    except ValueError:
        raise ValueError(
            f"--ray needs --cells N, the number of cells (>= 1), or a comma-separated list of cells; got {text!r}"
        ) from None
    if not cells or min(cells) < 0 or len(set(cells)) != len(cells):
        raise ValueError(f"--cells must name distinct cell indices >= 0, got {text!r}")
    workers = args.ray_workers
    if workers is not None and workers < 1:
        raise ValueError(f"--ray-workers must be >= 1, got {workers}")
    models = DEFAULT_MODELS if args.models is None else Path(args.models)
    return PotlineConfig(
        cells=cells,
        hours=args.hours,
        seed=seeds[0],
        mpc=mpc,
        safety=safety,
        workers=workers,
        ray_address=args.ray_address,
        twin=twin,
        plant=plant,
        models_dir=models / SURROGATE_DIRS["sparse"] if twin is None else None,
        progress=show_progress(args),
    )


def potline(config: PotlineConfig, out: str | Path) -> dict[str, Any]:
    """Run :func:`apps.fleet.control.run_potline` and write its report into ``out``; returns the report's
    document (``line``, ``cells``, ``settings``)."""
    timings: list[dict[str, float]] = []
    traces, run = run_potline(config, timings=timings)
    settings = {
        "cells": list(config.cells),
        "hours": config.hours,
        "seed": config.seed,
        "mpc": {**dataclasses.asdict(config.mpc), "weights": dataclasses.asdict(config.mpc.weights)},
        "safety": dataclasses.asdict(config.safety),
        "models_dir": str(config.models_dir) if config.models_dir is not None else None,
        **run,
    }
    return write_potline_report(traces, out, settings=settings, timings=timings, weights=config.mpc.weights)


def _potline_summary(doc: dict[str, Any], out: Path) -> str:
    line = doc["line"]
    d = line["interval_decide_s"]
    kwh = line["kwh_per_kg"]
    return (
        f"alutwin control --ray: report in {out}, {line['cells']} cells, "
        f"{'–' if kwh is None else f'{kwh:.4f}'} kWh/kg, {line['cells_all_windows_100pct']} cells held every window, "
        f"{line['fallback_intervals']} fallback intervals, NMPCs per interval p50 {d['p50']:.1f} s max {d['max']:.1f} s"
    )


def _summary(doc: dict[str, Any], out: Path) -> str:
    head = doc["headline"]
    parts = [f"report in {out}"]
    for key in ("cost_ratio_sparse_oracle", "cost_ratio_dense_oracle"):
        if key in head:
            parts.append(f"{key} {head[key]:.4f}")
    if "solve_time_ratio_dense_sparse" in head:
        parts.append(f"solve time dense/sparse {head['solve_time_ratio_dense_sparse']:.2f}x")
    return "alutwin control: " + ", ".join(parts)


def _run(args: argparse.Namespace) -> int:
    ray = bool(getattr(args, "ray", False))
    if not ray:
        given = [f for f, v in (("--ray-address", args.ray_address), ("--ray-workers", args.ray_workers)) if v]
        if given:
            raise ValueError(f"{' and '.join(given)} need --ray")
    config: SystemConfig | PotlineConfig = build_potline_config(args) if ray else build_config(args)
    if ray:
        ray_module()  # a clear error before any folder is made
    out = command_output_dir(args.out, "control-output")
    try:
        if isinstance(config, PotlineConfig):
            doc = potline(config, out)
            line = _potline_summary(doc, out)
        else:
            doc = control(config, out)
            line = _summary(doc, out)
    except BaseException:
        with contextlib.suppress(OSError):
            out.rmdir()  # only if still empty: a run that failed before its report leaves no folder behind
        raise
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``alutwin control`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code (2 for a bad
    argument or setting, with one line on stderr)."""
    return cli_main(["control", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
