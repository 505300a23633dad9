"""Prometheus metrics of one twin server, with ``prometheus_client``: a registry of the server's own (not the
process-global one, so that several servers run in one process), and its ``/metrics`` endpoint over HTTP.

Metrics: ``grpc_server_handled_total`` (RPCs completed, by ``grpc_service``, ``grpc_method`` and ``grpc_code``),
``grpc_server_handling_seconds`` (their latency, by service and method), and gauges read at scrape time (so they
are never out of date): ``alutwin_twin_active_model_version`` (by ``model`` and ``alias``),
``alutwin_twin_predictions_in_flight`` and ``alutwin_twin_registry_revision``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric

# What prometheus_client's own start_wsgi_server serves with: a daemon thread per scrape, no log line per scrape,
# the address family of the host (IPv6 included). The last two are private names: should a release drop them, this
# import fails at once rather than the endpoint misbehaving.
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "TwinMetrics"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (s) of the latency histogram's buckets; ``+Inf`` is added."""

_ACTIVE = ("alutwin_twin_active_model_version", "Version each alias serves.", ("model", "alias"))


class _ActiveVersions:
    """The gauge of the version each alias serves, one sample per alias, read from ``active`` at scrape time."""

    def __init__(self, active: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._active = active

    def describe(self) -> list[Metric]:  # lets the registry check the name without reading the gauge
        name, doc, labels = _ACTIVE
        return [GaugeMetricFamily(name, doc, labels=labels)]

    def collect(self) -> Iterator[Metric]:
        name, doc, labels = _ACTIVE
        family = GaugeMetricFamily(name, doc, labels=labels)
        for model, alias, version in self._active():
            family.add_metric((model, alias), version)
        yield family


class TwinMetrics:
    """The metric families of one twin server, in their own :class:`~prometheus_client.CollectorRegistry`.

    Parameters
    ----------
    active : callable
        ``(model, alias, version)`` of every alias serving now.
    in_flight, revision : callable
        Predictions running or queued; the registry's revision.
    """

    def __init__(
        self,
        active: Callable[[], Iterable[tuple[str, str, int]]],
        in_flight: Callable[[], float],
        revision: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by service, method and status code.",
            ("grpc_service", "grpc_method", "grpc_code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, by service and method.",
            ("grpc_service", "grpc_method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ActiveVersions(active))
        Gauge(
            "alutwin_twin_predictions_in_flight", "Predictions running or queued.", registry=self.registry
        ).set_function(in_flight)
        Gauge("alutwin_twin_registry_revision", "Revision of the model registry.", registry=self.registry).set_function(
            revision
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one call of ``method`` (``/service/Method``) that ended with ``code`` after ``seconds``."""
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "unknown", method)
        self.handled.labels(service, name, code.name).inc()
        self.latency.labels(service, name).observe(seconds)


def _only_metrics(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` on ``/metrics``; 404 elsewhere."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"only /metrics is served here\n"]
        return app(environ, start_response)

    return serve


class MetricsServer:
    """``/metrics`` of ``registry`` over HTTP on ``host:port`` (port 0 picks a free one), served by daemon
    threads from :meth:`start` to :meth:`stop`; the format follows the scraper's Accept header
    (:func:`prometheus_client.make_wsgi_app`).

    Raises
    ------
    OSError
        The address cannot be bound.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        family, address = _get_best_family(host.strip("[]"), port)
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
        self._http = make_server(
            address,
            port,
            _only_metrics(make_wsgi_app(registry)),
            server_class=server_class,
            handler_class=_SilentHandler,
        )
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="twin-metrics", daemon=True)

    def start(self) -> None:
        """Serve scrapes from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()
