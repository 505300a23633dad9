"""Prometheus metrics of one twin server: the families of every alutwin server (:class:`alutwin.metrics.RpcMetrics`,
in a registry of the server's own; its ``/metrics`` endpoint is :class:`alutwin.metrics.MetricsServer`) and the
twin's own.

Metrics: ``grpc_server_handled_total`` (RPCs completed, by ``grpc_service``, ``grpc_method`` and ``grpc_code``),
``grpc_server_handling_seconds`` (their latency, by service and method), and gauges read at scrape time (so they
are never out of date): ``alutwin_twin_active_model_version`` (by ``model`` and ``alias``),
``alutwin_twin_predictions_in_flight`` and ``alutwin_twin_registry_revision``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from alutwin.metrics import LATENCY_BUCKETS, MetricsServer, RpcMetrics

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "TwinMetrics"]

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


class TwinMetrics(RpcMetrics):
    """The metric families of one twin server (:class:`alutwin.metrics.RpcMetrics` and the twin's gauges), in
    their own :class:`~prometheus_client.CollectorRegistry`.

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
        super().__init__()
        self.registry.register(_ActiveVersions(active))
        self.read_at_scrape("gauge", "alutwin_twin_predictions_in_flight", "Predictions running or queued.", in_flight)
        self.read_at_scrape("gauge", "alutwin_twin_registry_revision", "Revision of the model registry.", revision)
