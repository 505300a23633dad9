"""``alutwin health``: ask a server's gRPC health service (``grpc.health.v1.Health/Check``) whether it serves.

A probe for container health checks (Docker's ``HEALTHCHECK``, compose, systemd's watchdogs, scripts): exit code
0 when the service is SERVING, 1 otherwise (NOT_SERVING, unknown service, unreachable server, time-out), with one
line on stdout saying which. Every alutwin server (plant, twin) answers health checks without a token, also while
it drains; the overall service ``""`` turns NOT_SERVING when it begins to shut down, and the twin's
``alutwin.v1.PredictionService`` serves only once a model does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.cli import CliError
from alutwin.rpc import open_channel

__all__ = ["check", "run"]


def check(address: str, service: str = "", *, timeout: float = 3.0, root_certificates: bytes | None = None) -> str:
    """The health status of ``service`` on the server at ``address``, by name.

    Parameters
    ----------
    address : str
        ``host:port`` of the server.
    service : str
        Health service name; ``""`` (the default) is the server as a whole.
    timeout : float
        Seconds the check may take, connecting included (> 0).
    root_certificates : bytes, optional
        PEM roots to trust: check over TLS.

    Returns
    -------
    ``"SERVING"``, ``"NOT_SERVING"``, ``"SERVICE_UNKNOWN"`` (a service name the server does not know) or
    ``"UNAVAILABLE"``/``"DEADLINE_EXCEEDED"``/... (the gRPC status code's name when the call fails).

    Raises
    ------
    ValueError
        ``timeout`` is not positive.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 s, got {timeout!r}")
    with open_channel(address, root_certificates=root_certificates) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return code.name if code is not None else "UNAVAILABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def run(args: argparse.Namespace) -> int:
    """Run ``alutwin health``: print the status, return 0 when SERVING, 1 otherwise."""
    roots = None
    if args.tls_ca is not None:
        try:
            roots = Path(args.tls_ca).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror or exc}") from None
    status = check(args.address, args.service, timeout=args.timeout, root_certificates=roots)
    name = f" {args.service}" if args.service else ""
    print(f"{args.address}{name}: {status}", flush=True)
    return 0 if status == "SERVING" else 1
