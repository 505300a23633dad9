"""The ``alutwin twin`` command: ``serve`` (the entry point of a twin server, and the only place that sets its
process-wide settings: logging and the allocator's :func:`keep_freed_memory`), the client commands ``register``
and ``models`` (through :class:`twin.client.TwinClient`), and the bridge's ``ingest``."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import grpc

from alutwin.cli import CliError
from twin.client import TwinClient
from twin.config import DEFAULT_PORT, TwinConfig
from twin.historian import HistorianError, register_bridge_cli
from twin.registry import StoreError
from twin.serving import serve

__all__ = ["keep_freed_memory", "register_cli"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit machines


def keep_freed_memory(mib: int) -> bool:
    """Let this process keep up to ``mib`` MiB of freed heap memory mapped for reuse; True where applied.

    A process-wide setting of the C library's allocator: only the ``alutwin twin serve`` entry point applies it
    (``heap_keep_mib``). glibc's allocator serves large blocks with fresh ``mmap`` and hands freed heap tops back
    to the system, so a Predict's arrays (tens of MB for a potline) are faulted in page by page on every call;
    with the mmap threshold at its maximum (32 MiB) and the trim threshold at ``mib``, such blocks come from the
    heap and their pages are reused. Memory of the process then stays up to ``mib`` MiB above what it uses. A
    no-op (False) for ``mib <= 0`` and where the C library has no ``mallopt`` (not glibc).
    """
    if mib <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, mib << 20))


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config = TwinConfig.from_yaml(args.config)
    else:
        config = TwinConfig(store=Path("data/twin-store"), port=DEFAULT_PORT)
    overrides = {"port": args.port, "host": args.host, "store": args.store}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.heap_keep_mib and not keep_freed_memory(config.heap_keep_mib):
        log.info("heap_keep_mib: this C library has no mallopt; the allocator keeps its defaults")
    try:
        serve(config)
    except (OSError, StoreError, HistorianError) as exc:
        raise CliError(str(exc)) from None
    return 0


def _client(args: argparse.Namespace) -> TwinClient:
    token = os.environ.get(args.token_env) if args.token_env else None
    roots = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return TwinClient(args.address, token=token, root_certificates=roots)


def _cmd_register(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            model, revision = client.register(
                args.name, args.model, set_alias=args.alias or "", description=args.description
            )
        except grpc.RpcError as exc:
            raise CliError(f"{exc.code().name}: {exc.details()}") from None
    moved = f", alias {args.alias!r} moved" if args.alias else ""
    print(f"registered {model.name} version {model.version} (revision {revision}{moved})")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            models, revision = client.list_models()
        except grpc.RpcError as exc:
            raise CliError(f"{exc.code().name}: {exc.details()}") from None
    print(f"registry revision {revision}")
    for m in models:
        aliases = ", ".join(f"{a} -> {v}" for a, v in m.aliases.items()) or "no aliases"
        print(f"{m.name}: versions {sorted(m.versions)}; {aliases}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``alutwin twin serve|register|models|ingest`` to the ``alutwin`` command (entry point
    ``alutwin.commands``)."""
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
    p.set_defaults(func=_cmd_serve)
    for name, helptext, func in (
        ("register", "upload a model directory as a new version", _cmd_register),
        ("models", "list the models, versions and aliases", _cmd_models),
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
    register_bridge_cli(actions)
