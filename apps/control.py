"""``alutwin control``: run the closed loop of ``control.md`` and write its report.

Also importable: :func:`control` runs a :class:`~apps.runner.SystemConfig` and writes the report;
:func:`main` is the command line (``python -m apps.control --hours 3 --out demo-output/control``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alutwin.cli import configure_logging
from apps.runner import SystemConfig, run_system
from controller.closed_loop import CONTROLLERS, DEFAULT_MODELS, Scenario
from controller.config import ControllerConfig
from controller.report import write_report

__all__ = ["build_config", "control", "main", "register_cli"]

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
        "scenarios": [dataclasses.asdict(s) for s in config.scenarios],
        "controllers": list(config.controllers),
        "mpc": {**dataclasses.asdict(config.mpc), "weights": dataclasses.asdict(config.mpc.weights)},
        "mpc_by_controller": {
            name: {key: value for key, value in dataclasses.asdict(cfg).items() if value != getattr(config.mpc, key)}
            for name, cfg in config.mpc_by_controller.items()
        },
        "safety": dataclasses.asdict(config.safety),
        "plant": "in-process Potline" if config.in_process else "plant service (gRPC, loopback)",
        "models_dir": str(config.models_dir),
        "wall_s": time.perf_counter() - t0,
    }
    return write_report(traces, out, settings=settings, weights=config.mpc.weights)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--{name} must be a positive number, got {value!r}")


def build_config(args: argparse.Namespace) -> SystemConfig:
    """The :class:`SystemConfig` the command-line arguments describe: the MPC and safety settings of the
    ``--mpc-config`` file (or the defaults), with the interval, horizon, JIT and watchdog flags given in their place.

    Raises
    ------
    ValueError
        Naming a bad argument, or every bad setting of the file (:class:`alutwin.config.ConfigError`).
    """
    base = ControllerConfig() if args.mpc_config is None else ControllerConfig.from_yaml(args.mpc_config)
    _positive("hours", args.hours)
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
    try:
        seeds = tuple(int(s) for s in str(args.seeds).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers, got {args.seeds!r}") from None
    if not seeds:
        raise ValueError("--seeds must name at least one seed")
    controllers = tuple(c.strip() for c in str(args.controllers).split(",") if c.strip())
    jit = base.mpc.jit and not args.no_jit
    mpc = dataclasses.replace(base.mpc, interval_steps=round(steps), horizon=round(intervals), jit=jit)
    safety = base.safety if args.watchdog_s is None else dataclasses.replace(base.safety, watchdog_s=args.watchdog_s)
    return SystemConfig(
        scenarios=tuple(Scenario(hours=args.hours, seed=s, noise=args.noise) for s in seeds),
        controllers=controllers,
        mpc=mpc,
        safety=safety,
        models_dir=Path(args.models),
        in_process=args.in_process,
        progress=not args.quiet,
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hours", type=float, default=24.0, help="plant hours per scenario (default 24)")
    p.add_argument("--seeds", default="0", help="comma-separated scenario seeds (default 0)")
    p.add_argument(
        "--controllers",
        default=",".join(CONTROLLERS),
        help=f"comma-separated controllers from {','.join(CONTROLLERS)} (default all)",
    )
    p.add_argument("--out", type=Path, default=Path("control-report"), help="report folder (default control-report)")
    p.add_argument(
        "--mpc-config",
        type=Path,
        help="YAML file of the MPC and safety settings (see deploy/mpc.yaml); the flags below override it",
    )
    p.add_argument(
        "--interval-min", type=float, help="control interval, minutes (default 10, or the --mpc-config file's)"
    )
    p.add_argument("--horizon-h", type=float, help="prediction horizon, hours (default 2, or the --mpc-config file's)")
    p.add_argument("--noise", action="store_true", help="measurement noise (2 degC on the bath temperature)")
    p.add_argument("--in-process", action="store_true", help="plant in-process instead of the plant service")
    p.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of the committed model directories")
    p.add_argument("--no-jit", action="store_true", help="do not compile the NLP to C (slow solves, quick builds)")
    p.add_argument(
        "--watchdog-s", type=float, help="measurement watchdog, s; 0: off (default 30, or the --mpc-config file's)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    config = build_config(args)
    if not args.quiet:
        configure_logging(logging.WARNING)
    doc = control(config, args.out)
    print(_summary(doc, args.out))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``alutwin control`` (entry point ``alutwin.commands``)."""
    p = subparsers.add_parser(
        "control",
        help="closed-loop NMPC against the plant service, with the twin in the loop",
        description="Run the cell's own controllers and the NMPC on the true equations, on the sparse and on the "
        "dense surrogate served by the twin, on the same seeded scenarios (random initial state, 'aprbs' current "
        "steps), against the plant service on loopback; write report.md, report.json and PNG plots. The MPC and "
        "safety settings come from --mpc-config (see deploy/mpc.yaml) or the defaults; the flags override them.",
    )
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line without the ``alutwin`` dispatcher; errors print one line and return 2."""
    parser = argparse.ArgumentParser(prog="alutwin control")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as exc:
        print(f"alutwin control: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
