"""The parsers of ``alutwin twin serve|register|models|ingest`` and ``alutwin identify`` (entry points
``alutwin.commands``).

Light on purpose: this module imports only the standard library, so that ``alutwin --help`` imports neither grpc
nor torch. Each command's ``func`` names its run function as ``"module:function"`` (:mod:`twin.cli`,
:mod:`twin.online.worker`); the dispatcher imports that module only when the command runs. Defaults that other
modules own are written here as literals; ``tests/alutwin/test_commands.py`` checks that they equal the real ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["BRIDGE_DEFAULTS", "DEFAULT_PORT", "REFIT_MODES", "register_identify", "register_ingest", "register_twin"]

DEFAULT_PORT = 50061
""":data:`twin.config.DEFAULT_PORT`."""

BRIDGE_DEFAULTS = {"every": 1, "batch_size": 500, "flush_s": 0.5, "token_env": "ALUTWIN_TWIN_TOKEN"}
"""The defaults of the :class:`twin.historian.BridgeConfig` fields that ``alutwin twin ingest`` has a flag for."""

REFIT_MODES = ("warm", "fresh")
""":data:`identification.online.REFIT_MODES`."""


def register_twin(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin twin serve|register|models|ingest``."""
    parser = subparsers.add_parser("twin", help="the digital twin: model registry and predictions over gRPC")
    actions = parser.add_subparsers(dest="twin_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "serve",
        help="serve alutwin.v1.PredictionService and ModelRegistry until SIGTERM/SIGINT",
        description="Serve the twin over gRPC (health checking and reflection included). Without --config: "
        f"store ./data/twin-store, 127.0.0.1:{DEFAULT_PORT}, no TLS, management off; flags override either.",
    )
    p.add_argument("--config", type=Path, help="YAML file of TwinConfig settings (see deploy/twin.yaml)")
    p.add_argument("--port", type=int, help="TCP port; 0 picks a free one")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--store", type=Path, help="model store directory")
    p.set_defaults(func="twin.cli:_cmd_serve", default_log_level="info")
    for name, helptext, func in (
        ("register", "upload a model directory as a new version", "twin.cli:_cmd_register"),
        ("models", "list the models, versions and aliases", "twin.cli:_cmd_models"),
    ):
        q = actions.add_parser(name, help=helptext)
        q.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}", help="host:port of the twin")
        q.add_argument("--token-env", default="ALUTWIN_TWIN_TOKEN", help="environment variable holding the token")
        q.add_argument("--tls-ca", help="PEM file of the roots to trust: connect with TLS")
        if name == "register":
            q.add_argument("--name", required=True, help="model name")
            q.add_argument("--model", required=True, type=Path, help="model directory (manifest.json + weights)")
            q.add_argument("--alias", help="move this alias to the new version (e.g. champion)")
            q.add_argument("--description", default="", help="free text kept with the version")
        q.set_defaults(func=func)
    register_ingest(actions)


def register_ingest(actions: argparse._SubParsersAction) -> None:
    """Add ``ingest`` (the plant-to-twin bridge) to the ``alutwin twin`` actions."""
    d = BRIDGE_DEFAULTS
    p = actions.add_parser(
        "ingest",
        help="forward the plant service's measurements into the twin's historian",
        description="Subscribe to the plant's StreamMeasurements and send the measurements to the twin's Ingest in "
        "batches, reconnecting with backoff when either side restarts and resuming after the twin's last "
        "acknowledged step. Runs until SIGTERM/SIGINT. Settings from --config (see deploy/bridge.yaml), "
        "overridden by the flags given.",
    )
    p.add_argument("--config", type=Path, help="YAML file of BridgeConfig settings (see deploy/bridge.yaml)")
    p.add_argument("--plant", help="host:port of the plant service (required without --config)")
    p.add_argument("--twin", help="host:port of the twin (required without --config)")
    p.add_argument("--cells", type=int, nargs="*", help="cells to forward (default all)")
    p.add_argument("--every", type=int, help=f"forward every N-th step (default {d['every']})")
    p.add_argument("--batch-size", type=int, help=f"most samples per batch (default {d['batch_size']})")
    p.add_argument("--flush-s", type=float, help=f"longest a sample waits for its batch, s (default {d['flush_s']})")
    p.add_argument("--token-env", help=f"environment variable holding the twin's token (default {d['token_env']})")
    p.add_argument("--tls-ca", type=Path, help="PEM file of the roots to trust: connect to the twin with TLS")
    p.set_defaults(func="twin.cli:_cmd_ingest", default_log_level="info")


def register_identify(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin identify --online``."""
    p = subparsers.add_parser(
        "identify",
        help="online identification: re-fit the twin's model from the historian and promote only what is better",
        description="Watch the historian; every N samples or T hours of plant time fit a challenger, judge it "
        "against the champion on held-out recent data by 1-hour-ahead rollout error, register it, and move the "
        "alias if the gate passes. Every decision goes to a JSON-lines log.",
    )
    p.add_argument("--online", action="store_true", help="run the online re-fit worker (the only mode)")
    p.add_argument("--twin", required=True, help="host:port of the twin")
    p.add_argument(
        "--historian",
        required=True,
        help="the historian's SQLite file, or a postgresql:// URL (password: $PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--model", required=True, help="model name in the twin's registry")
    p.add_argument("--alias", default="champion", help="alias to read and move (default champion)")
    p.add_argument("--token-env", default="ALUTWIN_TWIN_TOKEN", help="environment variable holding the token")
    p.add_argument("--tls-ca", help="PEM file of the roots to trust: connect with TLS")
    p.add_argument("--every-samples", type=int, help="re-fit after this many new samples (all cells)")
    p.add_argument("--every-hours", type=float, default=1.0, help="re-fit after this much plant time (0: off)")
    p.add_argument("--replay-hours", type=float, default=4.0, help="training window (default 4 h)")
    p.add_argument("--holdout-hours", type=float, default=1.5, help="held-out window (default 1.5 h, >= 1 h)")
    p.add_argument("--cells", type=int, nargs="+", help="cells to learn from (default: all)")
    p.add_argument("--mode", choices=REFIT_MODES, default="warm", help="warm start (default) or fresh fit")
    p.add_argument("--epochs", type=int, default=20, help="epochs of a warm re-fit (default 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--margin", type=float, default=0.9, help="promote if error <= margin x champion's")
    p.add_argument("--cell-tolerance", type=float, default=1.1, help="no cell worse than this x champion's")
    p.add_argument("--decisions", type=Path, help="decisions log (default beside the historian)")
    p.add_argument("--state", type=Path, help="worker state file (default beside the historian)")
    p.add_argument("--no-screen", action="store_true", help="do not screen the data for sensor faults")
    p.add_argument("--log-rejected-only", action="store_true", help="do not register rejected challengers")
    p.add_argument("--reset-faults", action="store_true", help="forget latched sensor faults first")
    p.add_argument("--once", action="store_true", help="run one cycle now and exit")
    p.add_argument("--poll-s", type=float, default=2.0, help="seconds between looks at the historian")
    p.set_defaults(func="twin.online.worker:_run", default_log_level="info")
