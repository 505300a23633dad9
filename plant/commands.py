"""The parsers of ``alutwin simulate``, ``alutwin plant serve`` and ``alutwin plant-demo`` (entry points
``alutwin.commands``).

Light on purpose: this module imports only the standard library, so that ``alutwin --help`` stays fast. Each
command's ``func`` names its run function as ``"module:function"``; the dispatcher imports that module only when
the command runs. Defaults that other modules own are written here as literals; ``tests/alutwin/test_commands.py``
checks that they equal the real ones.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = [
    "DEFAULT_ENGINE",
    "DEFAULT_PORT",
    "ENGINE_NAMES",
    "EXCITATION_NAMES",
    "PUBLISHED_SIZES",
    "register_plant",
    "register_plant_demo",
    "register_simulate",
]

ENGINE_NAMES = ("auto", "compiled", "numpy")
"""The keys of :data:`plant.simulator.ENGINES`, sorted."""

DEFAULT_ENGINE = "auto"
""":data:`plant.datasets.DEFAULT_ENGINE`."""

EXCITATION_NAMES = ("aprbs", "constant", "oper")
"""The keys of :data:`plant.excitation.EXCITATIONS`, sorted."""

PUBLISHED_SIZES = {"train": 40, "test": 100, "steps": 5000}
""":data:`plant.datasets.PUBLISHED_SIZES`."""

DEFAULT_PORT = 50051
""":data:`plant.service.DEFAULT_PORT`."""


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return v


def _positive(text: str) -> int:
    v = _count(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return v


def _hours(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of hours > 0, got {text!r}") from None
    if not (math.isfinite(v) and 0 < v <= 24 * 30):
        raise argparse.ArgumentTypeError(f"must be a number of hours in (0, 720], got {text!r}")
    return v


def register_simulate(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin simulate``: write ``DIR/train.safetensors`` and ``DIR/test.safetensors``."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate identification data sets (train and test) to safetensors files",
        description=(
            "Simulate the training and test sets of the published study (40 and 100 trajectories of 5000 "
            "steps of 10 s by default) and write OUT/train.safetensors and OUT/test.safetensors. The test set "
            "draws from an independent stream of the same seed. A size of 0 skips that set."
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (created if missing; default: a new ./simulate-output-<UTC time>)",
    )
    p.add_argument("--train", type=_count, default=PUBLISHED_SIZES["train"], metavar="N", help="training trajectories")
    p.add_argument("--test", type=_count, default=PUBLISHED_SIZES["test"], metavar="N", help="test trajectories")
    p.add_argument(
        "--steps", type=_positive, default=PUBLISHED_SIZES["steps"], metavar="T", help="steps per trajectory"
    )
    p.add_argument("--seed", type=_count, default=0, help="seed (non-negative integer)")
    p.add_argument("--excitation", choices=EXCITATION_NAMES, default="aprbs", help="excitation (default aprbs)")
    p.add_argument("--noise", action="store_true", help="add measurement noise y (2 degC on the bath temperature)")
    p.add_argument(
        "--engine", choices=ENGINE_NAMES, default=DEFAULT_ENGINE, help="simulation engine (compiled needs a C compiler)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func="plant.datasets.cli:_run_simulate")


def register_plant(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin plant serve``."""
    parser = subparsers.add_parser("plant", help="the simulated potline as a gRPC service")
    actions = parser.add_subparsers(dest="plant_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "serve",
        help="serve alutwin.v1.PlantService until SIGTERM/SIGINT",
        description="Serve a simulated potline over gRPC (health checking and reflection included). "
        f"Without --config: 4 cells, seed 0, stepped mode, 127.0.0.1:{DEFAULT_PORT}; flags override either.",
    )
    p.add_argument("--config", type=Path, help="YAML file of PlantConfig settings (see deploy/plant.yaml)")
    p.add_argument("--port", type=int, help="TCP port; 0 picks a free one")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--cells", type=int, help="number of cells")
    p.add_argument("--real-time-factor", type=float, help="plant seconds per wall second; 0 = stepped mode")
    p.add_argument("--seed", type=int, help="seed of initial states, current profile and noise")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="port of the Prometheus /metrics endpoint; 0 picks a free one (default: none, or the --config file's)",
    )
    p.set_defaults(func="plant.service:_cmd_serve", default_log_level="info")


def register_plant_demo(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin plant-demo``."""
    p = subparsers.add_parser(
        "plant-demo",
        help="simulate one cell for a day and write a plot and a summary",
        description="One cell for a day under its own feed controllers, plotted and summarised.",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: a new ./plant-demo-output-<UTC time>)"
    )
    p.add_argument("--hours", type=_hours, default=24.0, help="plant time to simulate (default 24)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the initial state and current steps")
    p.add_argument(
        "--engine", choices=ENGINE_NAMES, default=DEFAULT_ENGINE, help="simulation engine (compiled needs a C compiler)"
    )
    p.set_defaults(func="plant.demo:_run")
