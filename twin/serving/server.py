"""The twin's gRPC server: ``alutwin.v1.PredictionService`` and ``alutwin.v1.ModelRegistry``, thin servicers over
a :class:`~twin.registry.registry.ModelRegistry` and a bounded rollout pool.

:func:`create_server` builds a bound, not yet started server (port 0 allowed) with health checking, reflection,
an interceptor that checks the management token and counts every call for Prometheus, and optionally TLS and
a ``/metrics`` endpoint; :func:`serve` runs one until SIGTERM/SIGINT and then drains: health turns NOT_SERVING,
Watch streams end, new calls get UNAVAILABLE and calls in flight get ``grace_s`` to finish.

A prediction runs off the gRPC threads, in a pool of ``rollout_threads``: at most ``max_concurrent_predictions``
run or wait there (more get RESOURCE_EXHAUSTED), and the handler waits no longer than the call's deadline.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import dataclasses
import functools
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alutwin.cli import CliError
from alutwin.codec import parse_predict_request, serialize_predict_response, signal_to_pb
from alutwin.rpc import Abort, unary_errors
from alutwin.v1 import ingest_pb2_grpc, twin_pb2, twin_pb2_grpc
from identification.rollout import OUTPUT_ORDER, make_rollout_engine
from plant.physics import OUTPUT_FUNCTIONS
from plant.potline import OUTPUTS
from plant.signals import INPUT_NAMES, INPUTS, N_INPUTS, N_STATES, STATE_NAMES, STATES
from twin.client import TwinClient
from twin.config import DEFAULT_PORT, TwinConfig
from twin.historian import INGEST_SERVICE, HistorianError, IngestServicer, open_historian, register_bridge_cli
from twin.registry import (
    DEFAULT_ALIAS,
    Conflict,
    Dependency,
    EventType,
    InvalidRequest,
    ModelRecord,
    ModelRegistry,
    ModelStore,
    NotFound,
    NotServable,
    RegistryClosed,
    RegistryEvent,
    ServedModel,
    StoreError,
    TooManyWatchers,
    WatchClosed,
)
from twin.serving.metrics import Counter, Gauge, Histogram, MetricsRegistry, MetricsServer

__all__ = [
    "DEFAULT_OUTPUTS",
    "MANAGEMENT_METHODS",
    "OUTPUT_FUNCTIONS",
    "PREDICTION_SERVICE",
    "REGISTRY_SERVICE",
    "Limits",
    "PredictionResult",
    "TwinRuntime",
    "TwinServer",
    "check_prediction",
    "create_server",
    "predict",
    "register_cli",
    "serve",
]

log = logging.getLogger(__name__)

PREDICTION_SERVICE = twin_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
"""``"alutwin.v1.PredictionService"``."""
REGISTRY_SERVICE = twin_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name
"""``"alutwin.v1.ModelRegistry"``."""
MANAGEMENT_METHODS = frozenset(
    {*(f"/{REGISTRY_SERVICE}/{m}" for m in ("RegisterModel", "SetAlias", "Rollback")), f"/{INGEST_SERVICE}/Ingest"}
)
"""Full names of the RPCs that need the bearer token (Ingest writes the data the online re-fit learns from)."""

_OUTPUT_INDEX = {name: i for i, name in enumerate(OUTPUT_ORDER)}
DEFAULT_OUTPUTS = ("superheat", "alumina_pct", "alf3_pct", "cell_voltage")

_POLL_S = 0.25  # how often a waiting Watch stream checks that its client is still there
_NO_DEADLINE_S = 1e7  # a call's time_remaining() above this means it has no deadline
_RESPONSE_OVERHEAD = 4096  # bytes of a PredictResponse besides its arrays (a generous bound)


# ---------------------------------------------------------------------------------------------------------------
# Predictions, in process


@dataclass(frozen=True)
class Limits:
    """What one Predict may ask for."""

    max_batch: int
    max_horizon: int
    max_work: int
    max_message_bytes: int

    @classmethod
    def of(cls, config: TwinConfig) -> Limits:
        return cls(config.max_batch, config.max_horizon, config.max_work, config.max_message_bytes)


@dataclass(frozen=True)
class PredictionResult:
    """A prediction of B scenarios over H steps by one version."""

    served: ServedModel
    mean: np.ndarray  # (B, H + 1, 8)
    spread: np.ndarray  # (B, H + 1, 8)
    output_names: tuple[str, ...]
    outputs: np.ndarray  # (B, H + 1, n_outputs)
    members: np.ndarray | None  # (M, B, H + 1, 8)


def _first_bad(a: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    return f"[{', '.join(map(str, idx))}] = {float(a[idx])!r}"


def check_prediction(
    x0: np.ndarray,
    u: np.ndarray,
    n_members: int,
    n_outputs: int,
    include_members: bool,
    limits: Limits,
    item_bytes: int = 8,
) -> None:
    """Refuse (InvalidRequest) a prediction of wrong shapes, non-finite values or beyond ``limits``."""
    if x0.ndim != 2 or x0.shape[1] != N_STATES:
        raise InvalidRequest(f"x0 must have shape (B, {N_STATES}), got {list(x0.shape)}")
    b = x0.shape[0]
    if u.ndim != 3 or u.shape[0] != b or u.shape[2] != N_INPUTS:
        raise InvalidRequest(f"u must have shape (B, H, {N_INPUTS}) with B = {b} as in x0, got {list(u.shape)}")
    h = u.shape[1]
    if not 1 <= b <= limits.max_batch:
        raise InvalidRequest(f"B = {b} scenarios; this server takes 1 to {limits.max_batch}")
    if not 1 <= h <= limits.max_horizon:
        raise InvalidRequest(f"horizon H = {h} steps; this server takes 1 to {limits.max_horizon}")
    work = b * h * n_members
    if work > limits.max_work:
        raise InvalidRequest(
            f"B * H * M = {b} * {h} * {n_members} = {work} exceeds this server's limit of {limits.max_work}; "
            "split the batch or shorten the horizon"
        )
    if not np.isfinite(x0).all():
        raise InvalidRequest(f"x0{_first_bad(x0)} is not a finite number")
    if not np.isfinite(u).all():
        raise InvalidRequest(f"u{_first_bad(u)} is not a finite number")
    per_step = 2 * N_STATES + n_outputs + (n_members * N_STATES if include_members else 0)
    size = item_bytes * b * (h + 1) * per_step + _RESPONSE_OVERHEAD
    if size > limits.max_message_bytes:
        raise InvalidRequest(
            f"the response would take about {size} bytes, more than this server's max_message_bytes "
            f"({limits.max_message_bytes}); ask for fewer scenarios, a shorter horizon"
            + (" or no member trajectories" if include_members else "")
        )


def predict(
    served: ServedModel,
    x0: np.ndarray,
    u: np.ndarray,
    output_names: Sequence[str] = DEFAULT_OUTPUTS,
    include_members: bool = False,
) -> PredictionResult:
    """What Predict computes, in process: every member's rollout, their mean and spread, and the algebraic
    outputs of the mean (:meth:`identification.rollout.RolloutEngine.simulate_summary`)."""
    s = served.engine.simulate_summary(x0, u, members=include_members)
    idx = [_OUTPUT_INDEX[n] for n in output_names]
    outputs = s.outputs[..., idx]  # (B, H + 1, n_outputs)
    return PredictionResult(served, s.mean, s.spread, tuple(output_names), outputs, s.members)


# ---------------------------------------------------------------------------------------------------------------
# Runtime: what the servicers talk to


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of an exception (no traces, no paths)."""
    codes = (
        (Abort, None),
        (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (NotServable, grpc.StatusCode.FAILED_PRECONDITION),
        (Conflict, grpc.StatusCode.ABORTED),
        (TooManyWatchers, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RegistryClosed, grpc.StatusCode.UNAVAILABLE),
    )
    for kind, code in codes:
        if isinstance(exc, kind):
            return (exc.code, exc.message) if isinstance(exc, Abort) else (code, str(exc))
    log.error("unexpected error in a twin call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error in the twin service"


class TwinRuntime:
    """The registry, the rollout pool with its admission limit, and the limits of one server."""

    def __init__(self, config: TwinConfig, registry: ModelRegistry) -> None:
        self.config = config
        self.registry = registry
        self.limits = Limits.of(config)
        self._pool = concurrent.futures.ThreadPoolExecutor(config.rollout_threads, thread_name_prefix="twin-rollout")
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Predictions running or queued in the pool."""
        return self._in_flight

    def resolve(self, ref: twin_pb2.ModelRef) -> tuple[ServedModel, str]:
        """The served model a ModelRef means, and the alias it named ("" for a version)."""
        if not ref.name:
            raise InvalidRequest("model.name is empty")
        which = ref.WhichOneof("selector")
        if which == "version":
            if ref.version == 0:
                raise InvalidRequest("model.version must be >= 1 (versions count from 1)")
            return self.registry.resolve(ref.name, version=ref.version), ""
        alias = ref.alias if which == "alias" else DEFAULT_ALIAS
        return self.registry.resolve(ref.name, alias=alias), alias

    def output_names(self, requested: Sequence[str]) -> tuple[str, ...]:
        names = tuple(requested) or DEFAULT_OUTPUTS
        for n in names:
            if n not in OUTPUT_FUNCTIONS:
                raise InvalidRequest(f"unknown output {n[:80]!r}; valid outputs are {list(OUTPUT_FUNCTIONS)}")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"outputs {list(names)} names an output twice")
        return names

    def run(self, work: Callable[[], Any], timeout: float | None) -> Any:
        """Run ``work`` in the rollout pool and wait for it at most ``timeout`` s (None: no deadline).

        Raises Abort with RESOURCE_EXHAUSTED when ``max_concurrent_predictions`` are running or queued, with
        DEADLINE_EXCEEDED when the deadline passes first, and with UNAVAILABLE once the pool is closed.
        """
        limit = self.config.max_concurrent_predictions
        with self._count_lock:
            if self._closed:
                raise Abort(grpc.StatusCode.UNAVAILABLE, "the twin is shutting down")
            if self._in_flight >= limit:
                raise Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._in_flight} predictions are running or queued, the most this server takes at once "
                    f"({limit}); retry later",
                )
            if timeout is not None and timeout <= 0:
                raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it started")
            self._in_flight += 1
            future = self._pool.submit(work)
        future.add_done_callback(self._release)  # the slot stays taken until the work really ends
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the prediction did not finish within the call's deadline ({timeout:.3g} s left when it was queued)",
            ) from None

    def _release(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def close(self) -> None:
        """Refuse new predictions and wait for the pool's work to end."""
        with self._count_lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------------
# Messages


def _resolved(served: ServedModel, alias: str = "") -> twin_pb2.ResolvedModel:
    return twin_pb2.ResolvedModel(name=served.name, version=served.version, alias=alias)


def _summary_pb(name: str, rec: ModelRecord) -> twin_pb2.ModelSummary:
    return twin_pb2.ModelSummary(
        name=name,
        versions=[
            twin_pb2.VersionSummary(version=v, kind=r.kind, registered=r.registered, description=r.description)
            for v, r in rec.versions.items()
        ],
        aliases=dict(rec.aliases),
    )


def _event_pb(event: RegistryEvent) -> twin_pb2.RegistryEvent:
    msg = twin_pb2.RegistryEvent(
        revision=event.revision,
        type=event.type.value,
        name=event.name,
        version=event.version,
        alias=event.alias,
        previous_version=event.previous_version,
        time_unix_ms=event.time_ms,
    )
    if event.type is EventType.SNAPSHOT and event.state is not None:
        msg.models.extend(_summary_pb(n, r) for n, r in event.state.models.items())
    return msg


def _dependency_pb(dep: Dependency) -> twin_pb2.DependencyMatrix:
    s = dep.scores
    return twin_pb2.DependencyMatrix(
        rows=dep.share.shape[0],
        cols=dep.share.shape[1],
        share=dep.share.ravel().tolist(),
        row_names=[f"d{n}/dt" for n in STATE_NAMES],
        col_names=[*STATE_NAMES, *INPUT_NAMES],
        scores=twin_pb2.StructureScores(
            precision=s["precision"], recall=s["recall"], f1=s["f1"], entries=int(s["entries"])
        ),
    )


_unary = unary_errors(_status_of)


# ---------------------------------------------------------------------------------------------------------------
# Servicers


class PredictionServicer(twin_pb2_grpc.PredictionServiceServicer):
    """Converts PredictionService messages to :func:`predict` calls in the rollout pool and back."""

    def __init__(self, runtime: TwinRuntime) -> None:
        self.runtime = runtime

    @_unary
    def GetServingInfo(
        self, request: twin_pb2.GetServingInfoRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ServingInfo:
        cfg = self.runtime.config
        return twin_pb2.ServingInfo(
            max_batch=cfg.max_batch,
            max_horizon=cfg.max_horizon,
            max_work=cfg.max_work,
            max_message_bytes=cfg.max_message_bytes,
            max_concurrent_predictions=cfg.max_concurrent_predictions,
            max_upload_bytes=self.runtime.registry.max_upload_bytes,
            default_alias=DEFAULT_ALIAS,
            states=[signal_to_pb(s) for s in STATES],
            inputs=[signal_to_pb(s) for s in INPUTS],
            outputs=[signal_to_pb(s) for s in OUTPUTS],
            default_outputs=list(DEFAULT_OUTPUTS),
        )

    @_unary
    def Predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        rt = self.runtime
        try:
            header, x0, u = parse_predict_request(request)
        except (ValueError, DecodeError) as exc:
            raise InvalidRequest(str(exc) if isinstance(exc, ValueError) else "not a PredictRequest") from None
        names = rt.output_names(header.outputs)
        served, alias = rt.resolve(header.model)
        include = header.include_members
        check_prediction(x0, u, served.n_members, len(names), include, rt.limits, _item_bytes(header.encoding))
        remaining = context.time_remaining()  # huge (not None) when the call has no deadline
        timeout = remaining if remaining < _NO_DEADLINE_S else None
        result = rt.run(lambda: predict(served, x0, u, names, include), timeout)
        response = twin_pb2.PredictResponse(
            model=_resolved(served, alias), output_names=names, n_members=served.n_members, dt_s=served.dt
        )
        arrays = {"mean": result.mean, "spread": result.spread, "outputs": result.outputs}
        if result.members is not None:
            arrays["members"] = result.members
        return serialize_predict_response(response, arrays, header.encoding)  # see _add_prediction_service


def _item_bytes(encoding: int) -> int:
    return 4 if encoding == twin_pb2.ARRAY_ENCODING_RAW_F32 else 8


def _add_prediction_service(servicer: PredictionServicer, server: grpc.Server) -> None:
    """What the generated ``add_PredictionServiceServicer_to_server`` does, except that Predict takes its
    request and returns its response as wire bytes (:func:`alutwin.codec.parse_predict_request`,
    :func:`alutwin.codec.serialize_predict_response`: one copy of the arrays instead of three), so its handler
    has neither deserialiser nor serialiser."""
    handlers = {
        "GetServingInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetServingInfo,
            request_deserializer=twin_pb2.GetServingInfoRequest.FromString,
            response_serializer=twin_pb2.ServingInfo.SerializeToString,
        ),
        "Predict": grpc.unary_unary_rpc_method_handler(servicer.Predict),
    }
    declared = {m.name for m in twin_pb2.DESCRIPTOR.services_by_name["PredictionService"].methods}
    if set(handlers) != declared:
        raise RuntimeError(f"PredictionService handlers {sorted(handlers)} differ from the contract {sorted(declared)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PREDICTION_SERVICE, handlers),))


class RegistryServicer(twin_pb2_grpc.ModelRegistryServicer):
    """Converts ModelRegistry messages to :class:`~twin.registry.registry.ModelRegistry` calls and back."""

    def __init__(self, runtime: TwinRuntime) -> None:
        self.runtime = runtime

    @property
    def registry(self) -> ModelRegistry:
        return self.runtime.registry

    @_unary
    def ListModels(
        self, request: twin_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ListModelsResponse:
        state = self.registry.state
        return twin_pb2.ListModelsResponse(
            models=[_summary_pb(n, r) for n, r in state.models.items()], revision=state.revision
        )

    @_unary
    def GetModel(self, request: twin_pb2.GetModelRequest, context: grpc.ServicerContext) -> twin_pb2.ModelVersionInfo:
        served, alias = self.runtime.resolve(request.model)
        manifest = served.loaded.manifest
        weights = served.surrogate.weights
        arch = weights.architecture
        rec = self.registry.state.models.get(served.name, ModelRecord())
        vrec = rec.versions.get(served.version)
        return twin_pb2.ModelVersionInfo(
            model=_resolved(served, alias),
            aliases=sorted(a for a, v in rec.aliases.items() if v == served.version),
            kind=served.loaded.kind,
            prior=served.surrogate.prior,
            n_members=served.n_members,
            architecture=twin_pb2.Architecture(
                n_in=arch.n_in, hidden=arch.hidden, n_out=arch.n_out, skip=arch.skip, blocks=arch.blocks
            ),
            dt_s=served.dt,
            exactly_sparse=weights.masks is not None,
            nonzero_weights=int(weights.nonzero().sum()),
            total_weights=arch.n_weights * served.n_members,
            created=manifest["created"],
            registered=vrec.registered if vrec else "",
            description=vrec.description if vrec else "",
            weights_sha256=manifest["weights"]["sha256"],
            loaded=self.registry.is_loaded(served.name, served.version),
        )

    @_unary
    def ExplainModel(
        self, request: twin_pb2.ExplainModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ModelExplanation:
        served, alias = self.runtime.resolve(request.model)
        ex = served.explanation
        return twin_pb2.ModelExplanation(
            model=_resolved(served, alias),
            layers=[
                twin_pb2.LayerSparsity(
                    layer=i,
                    n_in=s.n_in,
                    n_out=s.n_out,
                    total=s.total,
                    nonzero=s.nonzero,
                    above_threshold=s.above_threshold,
                )
                for i, s in enumerate(ex.layers)
            ],
            weight_threshold=ex.weight_threshold,
            path_dependency=_dependency_pb(ex.path),
            thresholded_path_dependency=_dependency_pb(ex.thresholded_path),
            jacobian_dependency=_dependency_pb(ex.jacobian),
            jacobian_points=ex.jacobian_points,
            jacobian_rel_threshold=ex.jacobian_rel_threshold,
            metrics_json=json.dumps(ex.metrics),
            provenance_json=json.dumps(ex.provenance),
        )

    @_unary
    def ExportModel(
        self, request: twin_pb2.ExportModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ExportModelResponse:
        served, alias = self.runtime.resolve(request.model)
        return twin_pb2.ExportModelResponse(
            model=_resolved(served, alias), manifest_json=served.manifest_bytes, weights=served.weights_bytes
        )

    @_unary
    def RegisterModel(
        self, request: twin_pb2.RegisterModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.RegisterModelResponse:
        served, revision = self.registry.register(
            request.name,
            request.manifest_json,
            request.weights,
            set_alias=request.set_alias,
            description=request.description,
        )
        return twin_pb2.RegisterModelResponse(model=_resolved(served, request.set_alias), revision=revision)

    @_unary
    def SetAlias(self, request: twin_pb2.SetAliasRequest, context: grpc.ServicerContext) -> twin_pb2.SetAliasResponse:
        if request.version == 0:
            raise InvalidRequest("version must be >= 1 (versions count from 1)")
        expected = request.expected_version if request.HasField("expected_version") else None
        previous, revision = self.registry.set_alias(request.name, request.alias, request.version, expected)
        return twin_pb2.SetAliasResponse(previous_version=previous, revision=revision)

    @_unary
    def Rollback(self, request: twin_pb2.RollbackRequest, context: grpc.ServicerContext) -> twin_pb2.RollbackResponse:
        version, left, revision = self.registry.rollback(request.name, request.alias or DEFAULT_ALIAS)
        return twin_pb2.RollbackResponse(version=version, rolled_back_from=left, revision=revision)

    def Watch(self, request: twin_pb2.WatchRequest, context: grpc.ServicerContext) -> Iterator[twin_pb2.RegistryEvent]:
        try:
            watcher = self.registry.watch(request.name)
        except Exception as exc:
            code, message = _status_of(exc)
            context.abort(code, message)
            return
        context.add_callback(watcher.close)  # wakes the loop below when the client goes away
        try:
            while True:
                try:
                    event = watcher.get(_POLL_S)
                except WatchClosed:
                    return
                if event is None:
                    if not context.is_active():
                        return
                    continue
                yield _event_pb(event)
        finally:
            self.registry.unwatch(watcher)


# ---------------------------------------------------------------------------------------------------------------
# Interceptor: management token, and metrics of every call


class _Metrics:
    """The metric families of a twin server."""

    def __init__(self, runtime_ref: Callable[[], TwinRuntime | None]) -> None:
        self.registry = MetricsRegistry()
        self.handled = self.registry.add(
            Counter(
                "grpc_server_handled_total",
                "RPCs completed on the server, by service, method and status code.",
                ("grpc_service", "grpc_method", "grpc_code"),
            )
        )
        self.latency = self.registry.add(
            Histogram(
                "grpc_server_handling_seconds",
                "Time from the start of an RPC to its status, by service and method.",
                ("grpc_service", "grpc_method"),
            )
        )

        def active() -> list[tuple[Sequence[str], float]]:
            rt = runtime_ref()
            return [] if rt is None else [((m, a), v) for m, a, v in rt.registry.active()]

        def in_flight() -> list[tuple[Sequence[str], float]]:
            rt = runtime_ref()
            return [((), 0 if rt is None else rt.in_flight)]

        def revision() -> list[tuple[Sequence[str], float]]:
            rt = runtime_ref()
            return [((), 0 if rt is None else rt.registry.state.revision)]

        self.registry.add(
            Gauge("alutwin_twin_active_model_version", "Version each alias serves.", ("model", "alias"), active)
        )
        self.registry.add(Gauge("alutwin_twin_predictions_in_flight", "Predictions running or queued.", (), in_flight))
        self.registry.add(Gauge("alutwin_twin_registry_revision", "Revision of the model registry.", (), revision))

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "unknown", method)
        self.handled.inc(service, name, code.name)
        self.latency.observe(seconds, service, name)


class _Gate:
    """Counts the twin's calls in progress; once closed, turns new ones away (UNAVAILABLE) while the running
    ones finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def enter(self) -> bool:
        """Count a new call in; False once closed."""
        with self._cond:
            if self._closed:
                return False
            self._active += 1
            return True

    def exit(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new calls and wait up to ``timeout`` s for the running ones; True if none is left."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._active == 0, timeout)


_DRAINING = (grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); retry on another server")
_GATED = (f"/{PREDICTION_SERVICE}/", f"/{REGISTRY_SERVICE}/", f"/{INGEST_SERVICE}/")  # health, reflection stay open


class _Interceptor(grpc.ServerInterceptor):
    """Checks the bearer token of management RPCs, turns the twin's calls away while draining, and records
    every call's status code and latency."""

    def __init__(self, token: str | None, metrics: _Metrics, gate: _Gate) -> None:
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
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                entered = gate is not None and gate.enter()
                try:
                    if gate is not None and not entered:
                        context.abort(*_DRAINING)
                    if denial is not None:
                        context.abort(*denial)
                    response = inner(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    if entered:
                        gate.exit()
                    observe(method, code, time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)

        def counted(inner_stream: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            """A streaming handler (a request, or an iterator of them) gated, authorised and counted."""

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = time.perf_counter()
                code = grpc.StatusCode.OK
                entered = gate is not None and gate.enter()
                try:
                    if gate is not None and not entered:
                        context.abort(*_DRAINING)
                    if denial is not None:
                        context.abort(*denial)
                    yield from inner_stream(request, context)
                    code = context.code() or grpc.StatusCode.OK
                except BaseException:
                    code = context.code() or grpc.StatusCode.CANCELLED
                    raise
                finally:
                    if entered:
                        gate.exit()
                    observe(method, code, time.perf_counter() - start)

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


# ---------------------------------------------------------------------------------------------------------------
# Server


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class TwinServer:
    """A bound twin server: :meth:`start`, :meth:`begin_shutdown`, :meth:`stop`. Made by :func:`create_server`;
    also a context manager (start on enter, stop on exit)."""

    def __init__(
        self,
        server: grpc.Server,
        runtime: TwinRuntime,
        health_servicer: health.HealthServicer,
        gate: _Gate,
        metrics_server: MetricsServer | None,
        host: str,
        port: int,
    ) -> None:
        self.grpc_server = server
        self.runtime = runtime
        self.health = health_servicer
        self._gate = gate
        self.metrics_server = metrics_server
        self.port = port
        self.address = _format_address(host, port)
        self._stopped = False
        self._lock = threading.Lock()
        self.ingest: IngestServicer | None = None  # set by create_server when the historian is on

    @property
    def registry(self) -> ModelRegistry:
        return self.runtime.registry

    @property
    def metrics_port(self) -> int | None:
        """Port of the ``/metrics`` endpoint, or None without one."""
        return None if self.metrics_server is None else self.metrics_server.port

    def start(self) -> None:
        self.grpc_server.start()
        if self.metrics_server is not None:
            self.metrics_server.start()

    def begin_shutdown(self) -> None:
        """Report NOT_SERVING on every health service name; calls are still answered until :meth:`stop`."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Drain, then stop.

        Health turns NOT_SERVING, Watch streams end, new calls of the twin's services get UNAVAILABLE (health
        checks are still answered) and the calls in flight get ``grace`` s (default ``config.grace_s``) to
        finish; then the server stops (cancelling what is left), and the pool, the registry and the metrics
        endpoint close.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        grace = self.runtime.config.grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        self.begin_shutdown()
        self.registry.end_watches()
        if self.ingest is not None:
            self.ingest.drain()  # Ingest streams end after their batch in progress
        if not self._gate.close(grace):
            log.warning("calls still in flight after the grace period of %g s are cancelled", grace)
        self.grpc_server.stop(max(0.0, deadline - time.monotonic())).wait()
        self.runtime.close()
        self.registry.close()
        if self.ingest is not None:
            self.ingest.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> TwinServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    twin.registry.store.StoreError
        The store is in use by another server, or its state file is unreadable.
    twin.historian.historian.HistorianError
        The historian's file cannot be opened (``config.historian``).
    ValueError
        The token in ``token_env`` is too short.
    """
    token = config.resolve_token()
    credentials = None
    if config.tls:
        try:
            credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        except OSError as exc:
            raise OSError(f"cannot read the TLS key or certificate: {exc.strerror} ({exc.filename})") from None
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    holder: list[TwinRuntime] = []
    metrics = _Metrics(lambda: holder[0] if holder else None)
    gate = _Gate()

    def on_change() -> None:
        rt = holder[0] if holder else None
        ok = rt is None or rt.registry.servable()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set(PREDICTION_SERVICE, status)

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
        )
    except BaseException:
        store.close()
        raise
    metrics_server = None
    ingest: IngestServicer | None = None
    try:
        if config.historian_path is not None:
            ingest = IngestServicer(open_historian(config.historian_path), config.historian)
        runtime = TwinRuntime(config, registry)
        holder.append(runtime)
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="twin-grpc"),
            interceptors=[_Interceptor(token, metrics, gate)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
        )
        _add_prediction_service(PredictionServicer(runtime), server)
        twin_pb2_grpc.add_ModelRegistryServicer_to_server(RegistryServicer(runtime), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", REGISTRY_SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        on_change()
        names = (PREDICTION_SERVICE, REGISTRY_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        if ingest is not None:
            ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
            health_servicer.set(INGEST_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            names = (*names, INGEST_SERVICE)
        reflection.enable_server_reflection(names, server)
        address = _format_address(config.host, config.port)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address} (address in use or not available)")
        if config.metrics_port:
            metrics_server = MetricsServer(metrics.registry, config.metrics_host, config.metrics_port)
    except BaseException:
        if holder:
            holder[0].close()
        registry.close()
        if ingest is not None:
            ingest.close()
        raise
    twin_server = TwinServer(server, runtime, health_servicer, gate, metrics_server, config.host, port)
    twin_server.ingest = ingest
    return twin_server, port


def _describe(server: TwinServer, config: TwinConfig, token: bool) -> str:
    state = server.registry.state
    parts = [
        f"store {config.store}",
        f"{len(state.models)} model(s), {len(server.registry.active())} alias(es) serving",
        "TLS" if config.tls else "no TLS",
        "management on" if token else "management off (no token)",
        f"historian {config.historian_path}" if config.historian_path is not None else "no historian",
    ]
    if server.metrics_port:
        parts.append(f"metrics on http://{_format_address(config.metrics_host, server.metrics_port)}/metrics")
    return ", ".join(parts)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit machines


def keep_freed_memory(mib: int) -> bool:
    """Let this process keep up to ``mib`` MiB of freed heap memory mapped for reuse; True where applied.

    glibc's allocator serves large blocks with fresh ``mmap`` and hands freed heap tops back to the system, so a
    Predict's arrays (tens of MB for a potline) are faulted in page by page on every call; with the mmap
    threshold at its maximum (32 MiB) and the trim threshold at ``mib``, such blocks come from the heap and
    their pages are reused. Memory of the process then stays up to ``mib`` MiB above what it uses. A no-op
    (False) for ``mib <= 0`` and where the C library has no ``mallopt`` (not glibc).
    """
    if mib <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, mib << 20))


def serve(config: TwinConfig, *, out: TextIO | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain (NOT_SERVING, in-flight calls get ``config.grace_s``).

    Prints the bound address to ``out`` (default stdout) once serving. Signal handlers are installed only when
    called from the main thread (and restored afterwards).
    """
    out = sys.stdout if out is None else out
    if config.heap_keep_mib and not keep_freed_memory(config.heap_keep_mib):
        log.info("heap_keep_mib: this C library has no mallopt; the allocator keeps its defaults")
    if not config.loopback and not config.tls:
        log.warning("serving on %s without TLS: anyone on the network can reach the twin", config.host)
    server, _ = create_server(config)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        server.start()
        services = f"{PREDICTION_SERVICE}, {REGISTRY_SERVICE}"
        description = _describe(server, config, config.resolve_token() is not None)
        print(f"alutwin twin: serving {services} on {server.address} ({description})", file=out, flush=True)
        while not stop.wait(0.1):
            pass
        print("alutwin twin: draining", file=out, flush=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("alutwin twin: stopped", file=out, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config = TwinConfig.from_yaml(args.config)
    else:
        config = TwinConfig(store=Path("data/twin-store"), port=DEFAULT_PORT)
    overrides = {"port": args.port, "host": args.host, "store": args.store}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
