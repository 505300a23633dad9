"""What the ``alutwin twin`` command runs (its parser is in :mod:`twin.commands`): ``serve`` (the entry point of a
twin server, and the only place that sets the allocator's process-wide :func:`keep_freed_memory`; the dispatcher
sets up logging), the client commands ``register`` and ``models`` (through :class:`twin.client.TwinClient`), and
the bridge's ``ingest``."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import sys
from pathlib import Path

import grpc

from alutwin.cli import CliError
from alutwin.rpc import stop_on_signals
from twin.client import TwinClient
from twin.config import DEFAULT_PORT, TwinConfig
from twin.historian import BridgeConfig, BridgeError, HistorianError, run_bridge
from twin.registry import StoreError
from twin.serving import serve

__all__ = ["config_from_args", "keep_freed_memory"]

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
    flags = {"port": args.port, "host": args.host, "store": args.store}
    config = TwinConfig.from_cli(args.config, flags, store=Path("data/twin-store"), port=DEFAULT_PORT)
    if config.heap_keep_mib and not keep_freed_memory(config.heap_keep_mib):
        log.info("heap_keep_mib: this C library has no mallopt; the allocator keeps its defaults")
    try:
        serve(config)
    except (OSError, StoreError, HistorianError) as exc:
        raise CliError(str(exc)) from None
    return 0


def _credentials(token_env: str | None, tls_ca: str | Path | None) -> tuple[str | None, bytes | None]:
    """The token in the environment variable ``token_env`` and the PEM roots in the file ``tls_ca`` (None for
    either not given).

    Raises
    ------
    alutwin.cli.CliError
        ``tls_ca`` cannot be read.
    """
    token = os.environ.get(token_env) if token_env else None
    try:
        roots = Path(tls_ca).read_bytes() if tls_ca else None
    except OSError as exc:
        raise CliError(f"cannot read tls_ca {tls_ca}: {exc.strerror or exc}") from None
    return token, roots


def _client(args: argparse.Namespace) -> TwinClient:
    token, roots = _credentials(args.token_env, args.tls_ca)
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


# ---------------------------------------------------------------------------------------------------------------
# alutwin twin ingest: the plant-to-twin bridge

_FLAGS = ("plant", "twin", "cells", "every", "batch_size", "flush_s", "token_env", "tls_ca")
"""The BridgeConfig fields that ``alutwin twin ingest`` has a flag for (the flag's dest is the field's name)."""


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    """The settings of ``alutwin twin ingest``: ``--config`` (if given), overridden by the flags given.

    Raises
    ------
    alutwin.config.ConfigError
        The file or a flag holds a bad setting (every problem named).
    alutwin.cli.CliError
        Neither the file nor the flags name the plant and the twin.
    """
    flags = {name: getattr(args, name) for name in _FLAGS}
    if flags["cells"] is not None:
        flags["cells"] = tuple(flags["cells"])
    no_token = flags["token_env"] == ""  # --token-env '': no token
    if no_token:
        flags["token_env"] = None
    missing = [f"--{n}" for n in ("plant", "twin") if flags[n] is None]
    if args.config is None and missing:
        raise CliError(f"give {' and '.join(missing)}, or a --config file that names them")
    config = BridgeConfig.from_cli(args.config, flags)
    return dataclasses.replace(config, token_env=None) if no_token else config


def _cmd_ingest(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    token, roots = _credentials(config.token_env, config.tls_ca)
    print(f"alutwin twin ingest: plant {config.plant} -> twin {config.twin}", flush=True)
    try:
        with stop_on_signals() as stop:
            stats = run_bridge(config, token=token, stop=stop, root_certificates=roots)
    except (BridgeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    fields = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(stats).items() if k != "last_error")
    print(f"alutwin twin ingest: stopped ({fields})", file=sys.stdout, flush=True)
    return 0
