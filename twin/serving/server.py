"""The twin's gRPC server: ``alutwin.v1.PredictionService``, ``alutwin.v1.ModelRegistry`` and, with a historian,
``alutwin.v1.IngestService``, over one :class:`~twin.registry.ModelRegistry` and a bounded rollout pool.

:func:`create_server` builds a bound, not yet started server (port 0 allowed) with health checking, reflection,
the interceptor (management token, drain gate, metrics) and optionally TLS and a ``/metrics`` endpoint;
:func:`serve` runs one until SIGTERM/SIGINT and then drains: health turns NOT_SERVING, Watch and Ingest streams
end, new calls get UNAVAILABLE and calls in flight get ``grace_s`` to finish.

A prediction runs off the gRPC threads, in a pool of ``rollout_threads``: at most ``max_concurrent_predictions``
run or wait there (more get RESOURCE_EXHAUSTED), and the handler waits no longer than the call's deadline.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import TextIO

import grpc
from grpc_health.v1 import health, health_pb2

from alutwin.metrics import MetricsServer
from alutwin.rpc import (
    GrpcServer,
    bind,
    format_address,
    new_server,
    serve_health_and_reflection,
    serve_until_signalled,
    server_credentials,
)
from alutwin.v1 import ingest_pb2_grpc, twin_pb2_grpc
from identification.rollout import make_rollout_engine
from twin.config import TwinConfig
from twin.historian import INGEST_SERVICE, IngestServicer, open_historian
from twin.registry import ModelRegistry, ModelStore
from twin.serving.gate import Gate
from twin.serving.interceptor import Interceptor
from twin.serving.kserve import KSERVE_SERVICE, KServeServicer, add_kserve_service
from twin.serving.prediction import PREDICTION_SERVICE, PredictionServicer, add_prediction_service
from twin.serving.registry_servicer import REGISTRY_SERVICE, RegistryServicer
from twin.serving.runtime import TwinRuntime
from twin.serving.telemetry import TwinMetrics

__all__ = ["TwinServer", "create_server", "serve"]

log = logging.getLogger(__name__)


class TwinServer(GrpcServer):
    """A bound twin server: :meth:`start`, :meth:`begin_shutdown`, :meth:`stop`. Made by :func:`create_server`;
    also a context manager (start on enter, stop on exit).

    :meth:`stop` drains: health turns NOT_SERVING, Watch streams end, Ingest streams end after their batch in
    progress, new calls of the twin's services get UNAVAILABLE (health checks are still answered) and the calls in
    flight get ``grace`` s (default ``config.grace_s``) to finish; then the server stops (cancelling what is
    left), and the pool, the registry, the historian and the metrics endpoint close.
    """

    def __init__(
        self,
        server: grpc.Server,
        runtime: TwinRuntime,
        health_servicer: health.HealthServicer,
        gate: Gate,
        metrics_server: MetricsServer | None,
        host: str,
        port: int,
        ingest: IngestServicer | None = None,
    ) -> None:
        super().__init__(server, health_servicer, host, port, runtime.config.grace_s)
        self.runtime = runtime
        self._gate = gate
        self.metrics_server = metrics_server
        self.ingest = ingest

    @property
    def registry(self) -> ModelRegistry:
        return self.runtime.registry

    @property
    def metrics_port(self) -> int | None:
        """Port of the ``/metrics`` endpoint, or None without one."""
        return None if self.metrics_server is None else self.metrics_server.port

    def _started(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.start()

    def _drain(self, grace: float) -> None:
        self.registry.end_watches()
        if self.ingest is not None:
            self.ingest.drain()  # Ingest streams end after their batch in progress
        if not self._gate.close(grace):  # grace 0 asks for exactly this: no warning then
            log.log(
                logging.WARNING if grace > 0 else logging.INFO,
                "calls in flight after the grace period of %g s are cancelled",
                grace,
            )

    def _close(self) -> None:
        _release(self.runtime, self.ingest, self.metrics_server)


def _release(runtime: TwinRuntime, ingest: IngestServicer | None, metrics_server: MetricsServer | None) -> None:
    """Close what a twin server holds, in this order: the pool, the registry, the historian, the metrics endpoint."""
    runtime.close()
    runtime.registry.close()
    if ingest is not None:
        ingest.close()
    if metrics_server is not None:
        metrics_server.stop()


def create_server(config: TwinConfig) -> tuple[TwinServer, int]:
    """A twin server bound to ``config.host:config.port`` over the store ``config.store``, not yet started.

    Returns
    -------
    (TwinServer, int)
        The server and the port it is bound to.

    Raises
    ------
    OSError
        The address (or the metrics address) cannot be bound, or the TLS files cannot be read.
    twin.registry.StoreError
        The store cannot be opened, or its state file is unreadable.
    twin.historian.HistorianError
        The historian cannot be opened (``config.historian``: its file, or its PostgreSQL database).
    ValueError
        The token in ``token_env`` is too short, or the variable ``historian.password_env`` is not set.
    """
    token = config.resolve_token()
    credentials = server_credentials(config.tls_cert, config.tls_key)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    opened: list[ModelRegistry] = []  # the registry, once built: it reports changes from its constructor on

    def on_change() -> None:
        ok = not opened or opened[0].servable()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (PREDICTION_SERVICE, KSERVE_SERVICE):  # KServe's ModelInfer is a Predict
            health_servicer.set(name, status)

    store = ModelStore(config.store)
    try:
        registry = ModelRegistry(
            store,
            keep_previous=config.keep_previous,
            cache_size=config.cache_size,
            smoke_horizon=config.smoke_horizon,
            max_upload_bytes=config.max_upload_bytes,
            max_watchers=config.max_watchers,
            watch_queue_size=config.watch_queue_size,
            engine_for=functools.partial(make_rollout_engine, engine=config.engine),
            on_change=on_change,
            poll_s=config.store_poll_s,
        )
    except BaseException:
        store.close()
        raise
    opened.append(registry)
    runtime = TwinRuntime(config, registry)
    ingest: IngestServicer | None = None
    metrics_server: MetricsServer | None = None
    try:
        if config.historian_target is not None:
            historian = open_historian(config.historian_target, password=config.historian.password())
            try:
                historian.claim_writer()
            except BaseException:
                historian.close()
                raise
            ingest = IngestServicer(historian, config.historian)
        metrics = TwinMetrics(registry.active, lambda: runtime.in_flight, lambda: registry.state.revision)
        gate = Gate()
        server = new_server(
            config.max_workers,
            "twin-grpc",
            interceptors=[Interceptor(token, metrics, gate)],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
        )
        add_prediction_service(PredictionServicer(runtime), server)
        twin_pb2_grpc.add_ModelRegistryServicer_to_server(RegistryServicer(runtime), server)
        add_kserve_service(KServeServicer(runtime, ready=lambda: _serving(health_servicer, PREDICTION_SERVICE)), server)
        services = [PREDICTION_SERVICE, REGISTRY_SERVICE, KSERVE_SERVICE]
        if ingest is not None:
            ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
            services.append(INGEST_SERVICE)
        serve_health_and_reflection(server, services, health_servicer)
        on_change()  # PredictionService serves only once a model does
        if config.metrics_port is not None:  # before the gRPC port: a bound gRPC server holds its port until it ran
            metrics_server = MetricsServer(
                metrics.registry, config.metrics_host, config.metrics_port, name="twin-metrics"
            )
        port = bind(server, config.host, config.port, credentials)
    except BaseException:
        _release(runtime, ingest, metrics_server)
        raise
    twin_server = TwinServer(server, runtime, health_servicer, gate, metrics_server, config.host, port, ingest)
    return twin_server, port


def _serving(health_servicer: health.HealthServicer, service: str) -> bool:
    """Whether ``health_servicer`` reports ``service`` (one it knows) SERVING."""
    reply = health_servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _describe(server: TwinServer, config: TwinConfig, token: bool) -> str:
    state = server.registry.state
    parts = [
        f"store {config.store}",
        f"{len(state.models)} model(s), {len(server.registry.active())} alias(es) serving",
        "TLS" if config.tls else "no TLS",
        "management on" if token else "management off (no token)",
        f"historian {config.historian_target}" if config.historian_target is not None else "no historian",
    ]
    if server.metrics_port is not None:
        parts.append(f"metrics on http://{format_address(config.metrics_host, server.metrics_port)}/metrics")
    return ", ".join(parts)


def serve(config: TwinConfig, *, out: TextIO | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain (NOT_SERVING, in-flight calls get ``config.grace_s``).

    Prints the bound address to ``out`` (default stdout) once serving. Signal handlers are installed only when
    called from the main thread (and restored afterwards).
    """
    out = sys.stdout if out is None else out
    if not config.loopback and not config.tls:
        log.warning("serving on %s without TLS: anyone on the network can reach the twin", config.host)
    server, _ = create_server(config)

    def serving() -> None:
        names = [PREDICTION_SERVICE, REGISTRY_SERVICE, KSERVE_SERVICE]
        if config.historian_target is not None:
            names.append(INGEST_SERVICE)
        services = ", ".join(names)
        description = _describe(server, config, config.resolve_token() is not None)
        print(f"alutwin twin: serving {services} on {server.address} ({description})", file=out, flush=True)

    serve_until_signalled(
        server, on_serving=serving, on_signal=lambda: print("alutwin twin: draining", file=out, flush=True)
    )
    print("alutwin twin: stopped", file=out, flush=True)
