"""The twin's gRPC server, split by concern.

Modules: ``prediction`` (what a Predict may ask for and computes; PredictionService), ``registry_servicer``
(ModelRegistry), ``kserve`` (the KServe v2 protocol's ``inference.GRPCInferenceService``), ``runtime`` (the
registry and the bounded rollout pool the servicers talk to; status codes), ``interceptor`` (management token,
drain gate, metrics of every call), ``gate`` (the drain gate), ``telemetry`` (Prometheus metrics and the
``/metrics`` endpoint), ``server`` (:func:`create_server`, :class:`TwinServer`, :func:`serve`). The
``alutwin twin`` command is :mod:`twin.cli`.
"""

from twin.serving.gate import Gate
from twin.serving.interceptor import MANAGEMENT_METHODS, Interceptor
from twin.serving.kserve import KSERVE_SERVICE, KServeServicer, add_kserve_service
from twin.serving.prediction import (
    DEFAULT_OUTPUTS,
    OUTPUT_FUNCTIONS,
    PREDICTION_SERVICE,
    Limits,
    PredictionResult,
    PredictionServicer,
    add_prediction_service,
    check_output_names,
    check_prediction,
    predict,
)
from twin.serving.registry_servicer import REGISTRY_SERVICE, RegistryServicer, version_info
from twin.serving.runtime import TwinRuntime, status_of
from twin.serving.server import TwinServer, create_server, serve
from twin.serving.telemetry import LATENCY_BUCKETS, MetricsServer, TwinMetrics

__all__ = [
    "DEFAULT_OUTPUTS",
    "Gate",
    "Interceptor",
    "KSERVE_SERVICE",
    "KServeServicer",
    "LATENCY_BUCKETS",
    "Limits",
    "MANAGEMENT_METHODS",
    "MetricsServer",
    "OUTPUT_FUNCTIONS",
    "PREDICTION_SERVICE",
    "PredictionResult",
    "PredictionServicer",
    "REGISTRY_SERVICE",
    "RegistryServicer",
    "TwinMetrics",
    "TwinRuntime",
    "TwinServer",
    "add_kserve_service",
    "add_prediction_service",
    "check_output_names",
    "check_prediction",
    "create_server",
    "predict",
    "serve",
    "status_of",
    "version_info",
]
