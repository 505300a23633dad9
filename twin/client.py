"""A small typed client of the twin (``alutwin.v1.PredictionService`` and ``alutwin.v1.ModelRegistry``): numpy
arrays and plain dataclasses out (:mod:`twin.results`), no protobuf.

Example::

    with TwinClient("127.0.0.1:50061") as twin:
        p = twin.predict("cell", x0, u)              # x0 (B, 8), u (B, H, 5); the "champion" version
        p.mean, p.spread, p.outputs["superheat"]     # (B, H + 1, 8), (B, H + 1, 8), (B, H + 1)
        model = twin.pin("cell")                     # the champion's version now, for a series of calls
        model.predict(x0, u).model.version == model.version
        surrogate = twin.export("cell").load().surrogate   # rebuild the model locally (the MPC does)

Management calls (:meth:`TwinClient.register`, :meth:`~TwinClient.set_alias`, :meth:`~TwinClient.rollback`)
send the client's ``token``. Errors of the service arrive as :class:`grpc.RpcError` (``.code()``,
``.details()``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.codec import encode_array, serialize_predict_request
from alutwin.rpc import bearer_metadata, open_channel
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME
from twin.results import (
    Dependency,
    EventType,
    ExportedModel,
    LayerSparsity,
    ModelExplanation,
    ModelId,
    ModelSummary,
    Prediction,
    RegistryEvent,
    ServingInfo,
    VersionInfo,
)

__all__ = [
    "DEFAULT_MESSAGE_BYTES",
    "PRECISIONS",
    "Dependency",
    "EventType",
    "ExportedModel",
    "LayerSparsity",
    "ModelExplanation",
    "ModelId",
    "ModelSummary",
    "PinnedModel",
    "Prediction",
    "RegistryEvent",
    "ServingInfo",
    "TwinClient",
    "VersionInfo",
    "WatchStream",
]

DEFAULT_MESSAGE_BYTES = 64 << 20


class WatchStream:
    """An iterator of :class:`RegistryEvent`; :meth:`cancel` (or ``with``) ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[RegistryEvent]:
        return self

    def __next__(self) -> RegistryEvent:
        return RegistryEvent.from_pb(next(self._call))

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


# ---------------------------------------------------------------------------------------------------------------
# The client


PRECISIONS = {"float64": twin_pb2.ARRAY_ENCODING_RAW, "float32": twin_pb2.ARRAY_ENCODING_RAW_F32}
"""How :meth:`TwinClient.predict` sends and receives arrays, by name."""


def _encoding(precision: str) -> twin_pb2.ArrayEncoding:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _wire_bytes(request: bytes | twin_pb2.PredictRequest) -> bytes:
    """Requests built by :func:`serialize_predict_request` go as they are; messages are serialised."""
    return request if isinstance(request, bytes) else request.SerializeToString()


_COMPUTE = {"float64": twin_pb2.COMPUTE_PRECISION_FLOAT64, "float32": twin_pb2.COMPUTE_PRECISION_FLOAT32}


def _predict_header(
    model: str,
    version: int | None,
    alias: str | None,
    outputs: Sequence[str],
    include_members: bool,
    precision: str,
    fields: Sequence[str],
    stride: int,
    compute: str,
) -> twin_pb2.PredictRequest:
    """A PredictRequest without its arrays."""
    if compute not in _COMPUTE:
        raise ValueError(f"compute must be one of {sorted(_COMPUTE)}, got {compute!r}")
    if not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    header = twin_pb2.PredictRequest(
        model=_ref(model, version, alias),
        outputs=list(outputs),
        include_members=include_members,
        encoding=_encoding(precision),
        stride=stride,
        precision=_COMPUTE[compute],
    )
    header.field_mask.paths.extend(fields)
    return header


def _ref(name: str, version: int | None, alias: str | None) -> twin_pb2.ModelRef:
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    if version is not None:
        return twin_pb2.ModelRef(name=name, version=version)
    if alias is not None:
        return twin_pb2.ModelRef(name=name, alias=alias)
    return twin_pb2.ModelRef(name=name)


class TwinClient:
    """Client of a twin server at ``address`` (``host:port``).

    Parameters
    ----------
    address : str
        Where the server listens.
    token : str, optional
        Bearer token sent with management calls.
    timeout : float
        Deadline of each call, s (a call's own ``timeout`` overrides it).
    root_certificates : bytes, optional
        PEM roots to trust: connect with TLS (the server's certificate must name the host of ``address``).
    max_message_bytes : int
        Largest message sent or received.
    options : sequence of (str, value)
        Further gRPC channel options.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._auth = bearer_metadata(token)
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ]
        self._channel = open_channel(address, root_certificates=root_certificates, options=opts)
        self._predict = twin_pb2_grpc.PredictionServiceStub(self._channel)
        self._predict_call = self._channel.unary_unary(
            f"/{twin_pb2.DESCRIPTOR.services_by_name['PredictionService'].full_name}/Predict",
            request_serializer=_wire_bytes,
            response_deserializer=Prediction.from_wire,
        )
        self._registry = twin_pb2_grpc.ModelRegistryStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # -- predictions -------------------------------------------------------------------------------------------

    def serving_info(self) -> ServingInfo:
        """The server's limits and signal tables."""
        r = self._predict.GetServingInfo(twin_pb2.GetServingInfoRequest(), timeout=self.timeout)
        return ServingInfo.from_pb(r)

    def predict_request(
        self,
        model: str,
        x0: np.ndarray,
        u: np.ndarray,
        *,
        version: int | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        include_members: bool = False,
        precision: str = "float64",
        fields: Sequence[str] = (),
        stride: int = 1,
        compute: str = "float64",
    ) -> twin_pb2.PredictRequest:
        """The PredictRequest :meth:`predict` sends, as a message."""
        header = _predict_header(model, version, alias, outputs, include_members, precision, fields, stride, compute)
        header.x0.CopyFrom(encode_array(x0, header.encoding))
        header.u.CopyFrom(encode_array(u, header.encoding))
        return header

    def predict(
        self,
        model: str,
        x0: np.ndarray,
        u: np.ndarray,
        *,
        version: int | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        include_members: bool = False,
        precision: str = "float64",
        fields: Sequence[str] = (),
        stride: int = 1,
        compute: str = "float64",
        timeout: float | None = None,
    ) -> Prediction:
        """Roll ``model`` out from ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)``.

        The version is ``version`` if given, else the target of ``alias`` (default "champion") now;
        ``Prediction.model`` says which served. ``outputs`` names the algebraic outputs (empty: the server's
        default set); ``include_members`` also returns every member's trajectory. ``precision`` is how the
        arrays travel: ``"float64"`` (exact) or ``"float32"`` (half the bytes both ways, for large batches:
        the server predicts from the inputs rounded to float32, and the results are rounded to float32).
        ``fields`` selects the arrays returned (any of "mean", "spread", "outputs", "members"; empty: mean,
        spread and outputs), ``stride`` returns every stride-th step only (``arr[:, ::stride]``; the rollout
        still runs every step), ``compute`` is the rollout's arithmetic (``"float64"`` or ``"float32"``: the
        network layers in float32). ``Prediction.validity`` says per scenario where the prediction leaves
        the valid domain or the training envelope and which members diverged.
        """
        header = _predict_header(model, version, alias, outputs, include_members, precision, fields, stride, compute)
        data = serialize_predict_request(header, x0, u, header.encoding)
        return self._predict_call(data, timeout=self._t(timeout))

    def pin(self, model: str, alias: str | None = None) -> PinnedModel:
        """The version ``alias`` (default "champion") of ``model`` points at now, for a series of calls that
        must all use the same weights."""
        info = self.get_model(model, alias=alias)
        return PinnedModel(self, model, info.model.version)

    # -- registry: reading -------------------------------------------------------------------------------------

    def list_models(self, *, page_size: int = 100) -> tuple[list[ModelSummary], int]:
        """Every model (fetched ``page_size`` at a time; 0: in one call), in order of name, and the registry
        revision of the last page."""
        models: list[ModelSummary] = []
        token = ""
        while True:
            req = twin_pb2.ListModelsRequest(page_size=page_size, page_token=token)
            r = self._registry.ListModels(req, timeout=self.timeout)
            models.extend(ModelSummary.from_pb(m) for m in r.models)
            token = r.next_page_token
            if not token:
                return models, r.revision

    def get_model(self, model: str, *, version: int | None = None, alias: str | None = None) -> VersionInfo:
        """Metadata of one version (default: the champion's)."""
        r = self._registry.GetModel(twin_pb2.GetModelRequest(model=_ref(model, version, alias)), timeout=self.timeout)
        return VersionInfo.from_pb(r)

    def explain(self, model: str, *, version: int | None = None, alias: str | None = None) -> ModelExplanation:
        """Sparsity, dependency, metrics and provenance of one version."""
        req = twin_pb2.ExplainModelRequest(model=_ref(model, version, alias))
        return ModelExplanation.from_pb(self._registry.ExplainModel(req, timeout=self.timeout))

    def export(self, model: str, *, version: int | None = None, alias: str | None = None) -> ExportedModel:
        """The two model files of one version; ``.load()`` rebuilds the surrogate."""
        req = twin_pb2.ExportModelRequest(model=_ref(model, version, alias))
        return ExportedModel.from_pb(self._registry.ExportModel(req, timeout=self.timeout))

    def watch(self, model: str = "") -> WatchStream:
        """Registry changes (of ``model``, or all): a snapshot first, then one event per change."""
        return WatchStream(self._registry.Watch(twin_pb2.WatchRequest(name=model)))

    # -- registry: management ----------------------------------------------------------------------------------

    def register(
        self,
        model: str,
        files: str | os.PathLike[str] | tuple[bytes, bytes],
        *,
        set_alias: str = "",
        description: str = "",
        timeout: float | None = None,
    ) -> tuple[ModelId, int]:
        """Upload a new version of ``model`` from a model directory or ``(manifest_json, weights)`` bytes;
        optionally point ``set_alias`` at it. Returns the new version and the registry revision."""
        if isinstance(files, tuple):
            manifest, weights = files
        else:
            directory = Path(files)
            manifest = (directory / MANIFEST_NAME).read_bytes()
            weights = (directory / WEIGHTS_NAME).read_bytes()
        req = twin_pb2.RegisterModelRequest(
            name=model, manifest_json=manifest, weights=weights, set_alias=set_alias, description=description
        )
        r = self._registry.RegisterModel(req, timeout=self._t(timeout), metadata=self._auth)
        return ModelId.from_pb(r.model), r.revision

    def set_alias(
        self, model: str, alias: str, version: int, *, expected_version: int | None = None
    ) -> tuple[int, int]:
        """Point ``alias`` at ``version``; returns the previous target (0: none) and the registry revision.
        With ``expected_version`` the move happens only if the alias points there now (0: nowhere yet)."""
        req = twin_pb2.SetAliasRequest(name=model, alias=alias, version=version)
        if expected_version is not None:
            req.expected_version = expected_version
        r = self._registry.SetAlias(req, timeout=self.timeout, metadata=self._auth)
        return r.previous_version, r.revision

    def rollback(self, model: str, alias: str = "") -> tuple[int, int, int]:
        """Move ``alias`` (default "champion") back; returns ``(version now, version left, revision)``."""
        r = self._registry.Rollback(
            twin_pb2.RollbackRequest(name=model, alias=alias), timeout=self.timeout, metadata=self._auth
        )
        return r.version, r.rolled_back_from, r.revision

    # -- operations --------------------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" = the whole server)."""
        r = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TwinClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PinnedModel:
    """One version of a model, for a series of calls that must all use the same weights."""

    client: TwinClient
    name: str
    version: int

    def predict(self, x0: np.ndarray, u: np.ndarray, **kwargs: Any) -> Prediction:
        """:meth:`TwinClient.predict` on this version."""
        return self.client.predict(self.name, x0, u, version=self.version, **kwargs)

    def export(self) -> ExportedModel:
        return self.client.export(self.name, version=self.version)
