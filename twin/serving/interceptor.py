"""The twin's server interceptor (an :class:`alutwin.rpc.CallInterceptor`): the bearer token of management RPCs,
the drain gate (UNAVAILABLE while draining) and the metrics of every call."""

from __future__ import annotations

import grpc

from alutwin.rpc import CallInterceptor
from twin.historian import INGEST_SERVICE
from twin.serving.gate import Gate
from twin.serving.kserve import KSERVE_SERVICE
from twin.serving.prediction import PREDICTION_SERVICE
from twin.serving.registry_servicer import REGISTRY_SERVICE
from twin.serving.telemetry import TwinMetrics

__all__ = ["MANAGEMENT_METHODS", "Interceptor"]

MANAGEMENT_METHODS = frozenset(
    {*(f"/{REGISTRY_SERVICE}/{m}" for m in ("RegisterModel", "SetAlias", "Rollback")), f"/{INGEST_SERVICE}/Ingest"}
)
"""Full names of the RPCs that need the bearer token (Ingest writes the data the online re-fit learns from)."""

_DRAINING = (grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); retry on another server")
# health, reflection and KServe's ServerLive, ServerReady and ServerMetadata stay open
_GATED = (f"/{PREDICTION_SERVICE}/", f"/{REGISTRY_SERVICE}/", f"/{INGEST_SERVICE}/", f"/{KSERVE_SERVICE}/Model")
_MANAGEMENT_OFF = (
    grpc.StatusCode.FAILED_PRECONDITION,
    "management RPCs are disabled on this server: it has no token configured (token_env in its config)",
)


class Interceptor(CallInterceptor):
    """Checks the bearer token of management RPCs, turns the twin's calls away while draining, and records
    every call's status code and latency (:class:`alutwin.rpc.CallInterceptor`).

    Parameters
    ----------
    token : str, optional
        The management token; without one, management RPCs get FAILED_PRECONDITION.
    metrics : TwinMetrics
        Where calls are counted.
    gate : Gate
        The drain gate of the twin's services (health checks and reflection pass it by).
    """

    def __init__(self, token: str | None, metrics: TwinMetrics, gate: Gate) -> None:
        super().__init__(
            token,
            MANAGEMENT_METHODS,
            metrics.observe,
            without_token=_MANAGEMENT_OFF,
            gate=gate,
            gated=_GATED,
            draining=_DRAINING,
        )
