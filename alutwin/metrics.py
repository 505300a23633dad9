"""Prometheus metrics of alutwin's gRPC servers, with ``prometheus_client``: :class:`RpcMetrics` (the metric families
every server has, in a registry of the server's own, not the process-global one, so that several servers run in
one process) and :class:`MetricsServer` (its ``/metrics`` endpoint over HTTP).

Every server counts ``grpc_server_handled_total`` (RPCs completed, by ``grpc_service``, ``grpc_method`` and
``grpc_code``) and ``grpc_server_handling_seconds`` (their latency, by service and method); a service adds its own
gauges and counters read at scrape time (:meth:`RpcMetrics.read_at_scrape`), so they are never out of date.
:meth:`RpcMetrics.observe` is what :class:`alutwin.rpc.CallInterceptor` reports each call to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# What prometheus_client's own start_wsgi_server serves with: a daemon thread per scrape, no log line per scrape,
# the address family of the host (IPv6 included). The last two are private names: should a release drop them, this
# import fails at once rather than the endpoint misbehaving.
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "RpcMetrics"]

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

_KINDS = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


class _ReadAtScrape:
    """One gauge or counter without labels whose value ``read()`` gives at scrape time."""

    def __init__(self, kind: str, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._family = _KINDS[kind]
        self._name = name
        self._documentation = documentation
        self._read = read

    def describe(self) -> list[Metric]:  # lets the registry check the name without reading the value
        return [self._family(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._name, self._documentation, value=float(self._read()))


class RpcMetrics:
    """The metric families of one server, in their own :class:`~prometheus_client.CollectorRegistry`
    (``registry``): the calls it handled and their latency; services add theirs with :meth:`read_at_scrape` or
    ``registry.register``."""

    def __init__(self) -> None:
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

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one call of ``method`` (``/service/Method``) that ended with ``code`` after ``seconds``."""
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "unknown", method)
        self.handled.labels(service, name, code.name).inc()
        self.latency.labels(service, name).observe(seconds)

    def read_at_scrape(self, kind: str, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Add a metric without labels whose value is ``read()`` at each scrape.

        Parameters
        ----------
        kind : str
            ``"gauge"`` or ``"counter"`` (a counter's name is exposed with ``_total`` appended).
        name, documentation : str
            The metric's name and help text.
        read : callable
            Returns the value now; it runs on the scraping thread.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
        self.registry.register(_ReadAtScrape(kind, name, documentation, read))


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
    (:func:`prometheus_client.make_wsgi_app`). ``name`` names the serving thread.

    Raises
    ------
    OSError
        The address cannot be bound.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, name: str = "metrics") -> None:
        family, address = _get_best_family(host.strip("[]"), port)
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
        self._http: WSGIServer = make_server(
            address,
            port,
            _only_metrics(make_wsgi_app(registry)),
            server_class=server_class,
            handler_class=_SilentHandler,
        )
        self.port: int = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        """Serve scrapes from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()
