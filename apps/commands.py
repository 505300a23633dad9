"""The parsers of ``alutwin demo``, ``alutwin control``, ``alutwin online-demo``, ``alutwin schema``, ``alutwin
health`` and ``alutwin fleet fit`` (entry points ``alutwin.commands``).

Light on purpose: this module imports only the standard library, so that ``alutwin --help`` imports neither torch
nor CasADi nor grpc. Each command's ``func`` names its run function as ``"module:function"``; the dispatcher
imports that module only when the command runs. Defaults that other modules own are written here as literals;
``tests/alutwin/test_commands.py`` checks that they equal the real ones. Folders of committed models default to
None here and are resolved by the run function (where the models are installed is not known without importing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "CONTROLLERS",
    "SCHEMA_NAMES",
    "register_control",
    "register_demo",
    "register_fleet",
    "register_health",
    "register_online_demo",
    "register_schema",
]

CONTROLLERS = ("baseline", "oracle", "sparse", "dense")
""":data:`controller.closed_loop.CONTROLLERS`."""


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin demo``."""
    p = subparsers.add_parser(
        "demo",
        help="the whole system on loopback: plant, twin + online re-fit, NMPC; writes a report",
        description="The whole system on loopback, for a few hours of plant time: the plant service, the twin "
        "with its historian, the bridge and the online re-fit worker, and the NMPC on the surrogate the twin "
        "serves, beside the cell's own controllers; writes a report.",
    )
    p.add_argument("--out", type=Path, help="report folder (default: a new ./demo-output-<UTC time>)")
    p.add_argument("--hours", type=float, default=4.0, help="plant time of the scenario (default 4 h)")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    p.add_argument("--refit-hours", type=float, default=1.0, help="online re-fit cadence in plant time (default 1)")
    p.add_argument("--models", type=Path, help="folder of the surrogates (default: the models shipped with alutwin)")
    p.set_defaults(func="apps.system_demo:_run")


def register_control(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin control``."""
    p = subparsers.add_parser(
        "control",
        help="closed-loop NMPC against the plant service, with the twin in the loop",
        description="Run the cell's own controllers and the NMPC on the true equations, on the sparse and on the "
        "dense surrogate served by the twin, on the same seeded scenarios (random initial state, 'aprbs' current "
        "steps), against the plant service; write report.md, report.json and PNG plots. Without --twin and "
        "--plant it starts both on loopback; with them it controls a twin and a plant that run elsewhere. The MPC "
        "and safety settings come from --mpc-config (see deploy/mpc.yaml) or the defaults; the flags override them.",
    )
    p.add_argument("--hours", type=float, default=24.0, help="plant hours per scenario (default 24)")
    p.add_argument("--seeds", default="0", help="comma-separated scenario seeds (default 0)")
    p.add_argument(
        "--controllers",
        default=",".join(CONTROLLERS),
        help=f"comma-separated controllers from {','.join(CONTROLLERS)} (default all)",
    )
    p.add_argument("--out", type=Path, help="report folder (default: a new ./control-output-<UTC time>)")
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
    p.add_argument("--models", help="folder of the model directories (default: the models shipped with alutwin)")
    p.add_argument("--no-jit", action="store_true", help="do not compile the NLP to C (slow solves, quick builds)")
    p.add_argument(
        "--watchdog-s", type=float, help="measurement watchdog, s; 0: off (default 30, or the --mpc-config file's)"
    )
    remote = p.add_argument_group("a twin and a plant that run elsewhere (default: start both on loopback)")
    remote.add_argument("--twin", metavar="ADDR", help="host:port of a running twin")
    remote.add_argument("--plant", metavar="ADDR", help="host:port of a running plant service")
    remote.add_argument(
        "--twin-tls-ca", metavar="PEM", help="PEM file of the roots to trust: connect to the twin with TLS"
    )
    remote.add_argument(
        "--plant-tls-ca", metavar="PEM", help="PEM file of the roots to trust: connect to the plant with TLS"
    )
    remote.add_argument(
        "--twin-token-env",
        metavar="NAME",
        default="ALUTWIN_TWIN_TOKEN",
        help="environment variable holding the twin's token (default ALUTWIN_TWIN_TOKEN)",
    )
    remote.add_argument(
        "--plant-token-env",
        metavar="NAME",
        default="ALUTWIN_PLANT_TOKEN",
        help="environment variable holding the plant's token (default ALUTWIN_PLANT_TOKEN)",
    )
    remote.add_argument(
        "--cells",
        default="0",
        metavar="LIST",
        help="comma-separated cells of a remote plant to control (default 0); with --ray: N, the cells 0..N-1 of "
        "a potline (or a list of a remote plant's cells)",
    )
    fleet = p.add_argument_group(
        "a potline on Ray (the 'fleet' extra): one NMPC per cell, on the twin's model of that cell (cell-000, ...)"
    )
    fleet.add_argument(
        "--ray",
        action="store_true",
        help="run one sparse-surrogate NMPC per --cells cell on Ray actors; without --plant a potline plant of "
        "those cells starts here, without --twin a twin serving the sparse model as every cell's model",
    )
    fleet.add_argument(
        "--ray-address", metavar="ADDR", help="join this Ray cluster ('auto': this machine's) instead of a local one"
    )
    fleet.add_argument("--ray-workers", type=int, metavar="N", help="Ray actors hosting the cells (default: the CPUs)")
    p.set_defaults(func="apps.control:_run")


def register_online_demo(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin online-demo``."""
    p = subparsers.add_parser(
        "online-demo", help="plant + twin + online re-fit through a drift; plots the twin's error"
    )
    p.add_argument("--out", type=Path, help="output folder (default: a new ./online-demo-output-<UTC time>)")
    p.add_argument("--hours", type=float, default=18.0, help="plant time to run (default 18 h)")
    p.add_argument("--drift-hours", type=float, help="when the drift starts (default 4/9 of --hours: 8 h of 18)")
    p.add_argument("--cells", type=int, default=4, help="cells of the potline (default 4)")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument("--model", type=Path, help="seed model directory (default: the sparse-inputskip model shipped)")
    p.add_argument("--every-hours", type=float, default=1.0, help="re-fit cadence (default 1 h)")
    p.add_argument("--replay-hours", type=float, default=4.0, help="training window (default 4 h)")
    p.add_argument("--holdout-hours", type=float, default=1.5, help="held-out window (default 1.5 h)")
    p.add_argument("--horizon-min", type=float, default=60.0, help="prediction horizon scored (default 60 min)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of a re-fit (default 20)")
    p.add_argument("--curve-every-min", type=float, default=10.0, help="minutes between scored points (default 10)")
    p.set_defaults(func="apps.online_demo:_run")


SCHEMA_NAMES = ("twin", "plant", "mpc", "bridge")
"""The settings files :mod:`apps.schemas` has a schema for (``<name>.schema.json``)."""


def register_schema(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin schema``."""
    p = subparsers.add_parser(
        "schema",
        help="print the JSON schema of a settings file (twin, plant, mpc, bridge)",
        description="Print the JSON schema of a settings file, made from the installed code: twin (alutwin twin "
        "serve --config), plant (alutwin plant serve --config), mpc (alutwin control --mpc-config), bridge "
        "(alutwin twin ingest --config). Save it beside the YAML file for an editor's completion and checks.",
    )
    p.add_argument("name", choices=SCHEMA_NAMES, help="which settings file")
    p.set_defaults(func="apps.schemas:run")


def register_health(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin health``."""
    p = subparsers.add_parser(
        "health",
        help="check a server's gRPC health: exit 0 when SERVING, 1 otherwise (for container health checks)",
        description="Ask the gRPC health service (grpc.health.v1.Health/Check) of a plant or twin server whether "
        "it serves; print the status and exit 0 when SERVING, 1 otherwise (NOT_SERVING, unknown service, "
        "unreachable). Health checks need no token.",
    )
    p.add_argument("address", metavar="ADDR", help="host:port of the server")
    p.add_argument("--service", default="", help="health service name (default '': the server as a whole)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds the check may take (default 3)")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="PEM file of the roots to trust: check over TLS")
    p.set_defaults(func="alutwin.health:run")


def register_fleet(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin fleet fit`` (the ``fleet`` extra: Ray)."""
    parser = subparsers.add_parser(
        "fleet", help="every cell of a potline at once, on Ray (pip install 'alutwin[fleet]')"
    )
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "fit",
        help="fit or re-fit each cell's ensemble as Ray tasks and register each as its own model (cell-000...)",
        description="Fit or re-fit the ensemble of cells 0 .. N-1, each on its own data set (its seed derived from "
        "--seed and the cell), as Ray tasks of --threads CPUs each: on a local Ray by default, on a running cluster "
        "with --address. Each model is registered in the twin (--twin) as model cell-NNN with the champion alias "
        "moved to it, or written to --out. A failed cell is reported and the others go on (exit code 1). The "
        "weights equal those of the same cells fitted one after another (--sequential, no Ray).",
    )
    p.add_argument("--cells", type=int, required=True, metavar="N", help="how many cells: cell-000 .. cell-(N-1)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join ('auto', host:port; default: a local Ray)")
    p.add_argument("--sequential", action="store_true", help="fit one cell after another in this process, no Ray")
    p.add_argument("--kind", default="sparse-inputskip", help="model kind (default sparse-inputskip)")
    p.add_argument("--members", type=int, default=10, help="ensemble size per cell (default 10)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--retrain-epochs", type=int, help="epochs after each pruning round (default: the kind's own)")
    p.add_argument("--train", type=int, default=40, help="training trajectories per cell (default 40)")
    p.add_argument("--steps", type=int, default=5000, help="steps per trajectory (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each cell derives its own (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPUs per cell: its Ray task's and its trainer's (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        help="folder of the model directories (default: a new ./fleet-output-<UTC time> without --twin)",
    )
    twin = p.add_argument_group("the twin the models are registered in (default: none, the models go to --out)")
    twin.add_argument("--twin", metavar="ADDR", help="host:port of a running twin")
    twin.add_argument(
        "--twin-tls-ca", metavar="PEM", help="PEM file of the roots to trust: connect to the twin with TLS"
    )
    twin.add_argument(
        "--twin-token-env",
        metavar="NAME",
        default="ALUTWIN_TWIN_TOKEN",
        help="environment variable holding the twin's management token (default ALUTWIN_TWIN_TOKEN)",
    )
    p.set_defaults(func="apps.fleet.fit:_run")
