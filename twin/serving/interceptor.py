"""The twin's server interceptor: the bearer token of management RPCs, the drain gate (UNAVAILABLE while
draining) and the metrics of every call."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from twin.historian import INGEST_SERVICE
from twin.serving.gate import Gate
from twin.serving.prediction import PREDICTION_SERVICE
from twin.serving.registry_servicer import REGISTRY_SERVICE
from twin.serving.telemetry import TwinMetrics

__all__ = ["MANAGEMENT_METHODS", "Interceptor"]

MANAGEMENT_METHODS = frozenset(
    {*(f"/{REGISTRY_SERVICE}/{m}" for m in ("RegisterModel", "SetAlias", "Rollback")), f"/{INGEST_SERVICE}/Ingest"}
)
"""Full names of the RPCs that need the bearer token (Ingest writes the data the online re-fit learns from)."""

_DRAINING = (grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); retry on another server")
_GATED = (f"/{PREDICTION_SERVICE}/", f"/{REGISTRY_SERVICE}/", f"/{INGEST_SERVICE}/")  # health, reflection stay open


@contextlib.contextmanager
def _admitted(
    method: str,
    gate: Gate | None,
    denial: tuple[grpc.StatusCode, str] | None,
    observe: Callable[[str, grpc.StatusCode, float], None],
    failure: grpc.StatusCode,
    context: grpc.ServicerContext,
) -> Iterator[None]:
    """One call of ``method``: through the ``gate`` (UNAVAILABLE once it is closed) and refused with ``denial``
    if there is one; its status (``failure`` when it raises without one) and latency are observed when it ends."""
    start = time.perf_counter()
    entered = gate is not None and gate.enter()
    code = grpc.StatusCode.OK
    try:
        if gate is not None and not entered:
            context.abort(*_DRAINING)
        if denial is not None:
            context.abort(*denial)
        yield
        code = context.code() or grpc.StatusCode.OK
    except BaseException:
        code = context.code() or failure
        raise
    finally:
        if entered:
            gate.exit()
        observe(method, code, time.perf_counter() - start)


class Interceptor(grpc.ServerInterceptor):
    """Checks the bearer token of management RPCs, turns the twin's calls away while draining, and records
    every call's status code and latency.

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
        self._token = token.encode() if token else None
        self._metrics = metrics
        self._gate = gate

    def _denial(self, metadata: Sequence[tuple[str, Any]] | None) -> tuple[grpc.StatusCode, str] | None:
        if self._token is None:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                "management RPCs are disabled on this server: it has no token configured (token_env in its config)",
            )
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return grpc.StatusCode.UNAUTHENTICATED, "this RPC needs the metadata 'authorization: Bearer <token>'"
        value = values[0] if isinstance(values[0], bytes) else str(values[0]).encode()
        if len(values) > 1 or not hmac.compare_digest(value, b"Bearer " + self._token):
            return grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"
        return None

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        denial = self._denial(details.invocation_metadata) if method in MANAGEMENT_METHODS else None
        observe = self._metrics.observe
        gate = self._gate if method.startswith(_GATED) else None

        def admitted(failure: grpc.StatusCode, context: grpc.ServicerContext) -> Any:
            return _admitted(method, gate, denial, observe, failure, context)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with admitted(grpc.StatusCode.UNKNOWN, context):
                    return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)

        def counted(inner_stream: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            """A streaming handler (a request, or an iterator of them) gated, authorised and counted."""

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with admitted(grpc.StatusCode.CANCELLED, context):  # raised without a status: the client left
                    yield from inner_stream(request, context)

            return stream

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                counted(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None and gate is not None:  # Ingest (server reflection passes through)
            return grpc.stream_stream_rpc_method_handler(
                counted(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler  # other streaming requests (server reflection): passed through, not counted
