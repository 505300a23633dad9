"""A small typed client of the twin (``alutwin.v1.PredictionService`` and ``alutwin.v1.ModelRegistry``): numpy
arrays and plain dataclasses out, no protobuf. Also the array codec both ends of the contract share.

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

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.codec import encode_array, serialize_predict_request, split_predict_response
from alutwin.rpc import open_channel
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, LoadedModel
from twin.registry import load_model_bytes

__all__ = [
    "DEFAULT_MESSAGE_BYTES",
    "PRECISIONS",
    "Dependency",
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


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ModelId:
    """Which version served a call (``alias`` is the alias the call named, "" for a pinned version)."""

    name: str
    version: int
    alias: str = ""

    @classmethod
    def from_pb(cls, msg: twin_pb2.ResolvedModel) -> ModelId:
        return cls(msg.name, msg.version, msg.alias)


@dataclass(frozen=True)
class Prediction:
    """A Predict result.

    Attributes
    ----------
    model : the version that served it.
    mean : (B, H + 1, 8) ensemble mean of the states; ``mean[:, 0]`` is ``x0``.
    spread : (B, H + 1, 8) standard deviation over the members.
    outputs : algebraic output name -> (B, H + 1), evaluated on the ensemble mean.
    members : (M, B, H + 1, 8) every member's trajectory, or None unless asked for.
    n_members : M.
    dt : time of one step, s.

    The arrays of a prediction received over gRPC are read-only views of the response (copy to modify).
    """

    model: ModelId
    mean: np.ndarray
    spread: np.ndarray
    outputs: dict[str, np.ndarray]
    members: np.ndarray | None
    n_members: int
    dt: float

    @classmethod
    def build(cls, header: twin_pb2.PredictResponse, arrays: dict[str, np.ndarray]) -> Prediction:
        """From a response's other fields and its arrays by field name (``members`` may be absent)."""
        missing = {"mean", "spread", "outputs"} - set(arrays)
        if missing:
            raise ValueError(f"the response lacks {sorted(missing)}")
        names = list(header.output_names)
        out = arrays["outputs"]
        if out.shape[-1] != len(names):
            raise ValueError(f"outputs has {out.shape[-1]} columns for {len(names)} output names")
        return cls(
            model=ModelId.from_pb(header.model),
            mean=arrays["mean"],
            spread=arrays["spread"],
            outputs={n: out[..., i] for i, n in enumerate(names)},
            members=arrays.get("members"),
            n_members=header.n_members,
            dt=header.dt_s,
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Prediction:
        """From the wire bytes of a PredictResponse; float64 arrays are read-only views of ``data`` (no copy)."""
        return cls.build(*split_predict_response(data))


@dataclass(frozen=True)
class ServingInfo:
    """The server's limits and signal tables (``(name, unit)`` pairs in vector order)."""

    max_batch: int
    max_horizon: int
    max_work: int
    max_message_bytes: int
    max_concurrent_predictions: int
    max_upload_bytes: int
    default_alias: str
    states: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    default_outputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelSummary:
    """One model: ``versions`` maps each version to ``(kind, registered, description)``; ``aliases`` to versions."""

    name: str
    versions: dict[int, tuple[str, str, str]]
    aliases: dict[str, int]

    @classmethod
    def from_pb(cls, m: twin_pb2.ModelSummary) -> ModelSummary:
        return cls(
            m.name,
            {v.version: (v.kind, v.registered, v.description) for v in m.versions},
            dict(m.aliases),
        )


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one version (``GetModel``)."""

    model: ModelId
    aliases: tuple[str, ...]
    kind: str
    prior: str
    n_members: int
    hidden: tuple[int, ...]
    skip: bool
    blocks: int
    dt: float
    exactly_sparse: bool
    nonzero_weights: int
    total_weights: int
    created: str
    registered: str
    description: str
    weights_sha256: str
    loaded: bool


@dataclass(frozen=True)
class LayerSparsity:
    n_in: int
    n_out: int
    total: int
    nonzero: int
    above_threshold: int


@dataclass(frozen=True)
class Dependency:
    """``share`` (8, 13): share of members whose derivative of state i depends on input j; ``scores``:
    precision, recall, f1, entries of the majority matrix against the true structure."""

    share: np.ndarray
    scores: dict[str, float]
    rows: tuple[str, ...]
    cols: tuple[str, ...]

    @classmethod
    def from_pb(cls, d: twin_pb2.DependencyMatrix) -> Dependency:
        s = d.scores
        return cls(
            np.array(d.share, dtype=np.float64).reshape(d.rows, d.cols),
            {"precision": s.precision, "recall": s.recall, "f1": s.f1, "entries": s.entries},
            tuple(d.row_names),
            tuple(d.col_names),
        )


@dataclass(frozen=True)
class ModelExplanation:
    """``ExplainModel``: sparsity per layer, dependency three ways, the manifest's metrics and provenance."""

    model: ModelId
    layers: tuple[LayerSparsity, ...]
    weight_threshold: float
    path: Dependency
    thresholded_path: Dependency
    jacobian: Dependency
    metrics: dict[str, Any] | None
    provenance: dict[str, Any]


@dataclass(frozen=True)
class ExportedModel:
    """A version's two model files, byte for byte; :meth:`load` validates and rebuilds the model."""

    model: ModelId
    manifest_json: bytes
    weights: bytes

    def load(self) -> LoadedModel:
        """The model (every check of :func:`identification.modelfile.load_model` applies)."""
        return load_model_bytes(self.manifest_json, self.weights)


@dataclass(frozen=True)
class RegistryEvent:
    """One message of ``Watch``: a change, or (type ``"SNAPSHOT"``) the whole registry in ``models``."""

    revision: int
    type: str
    name: str
    version: int
    alias: str
    previous_version: int
    time_ms: int
    models: tuple[ModelSummary, ...]

    @classmethod
    def from_pb(cls, e: twin_pb2.RegistryEvent) -> RegistryEvent:
        return cls(
            e.revision,
            twin_pb2.RegistryEventType.Name(e.type).removeprefix("REGISTRY_EVENT_TYPE_"),
            e.name,
            e.version,
            e.alias,
            e.previous_version,
            e.time_unix_ms,
            tuple(ModelSummary.from_pb(m) for m in e.models),
        )


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


def _encoding(precision: str) -> int:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _wire_bytes(request: bytes | twin_pb2.PredictRequest) -> bytes:
    """Requests built by :func:`serialize_predict_request` go as they are; messages are serialised."""
    return request if isinstance(request, bytes) else request.SerializeToString()


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
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
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
        return ServingInfo(
            max_batch=r.max_batch,
            max_horizon=r.max_horizon,
            max_work=r.max_work,
            max_message_bytes=r.max_message_bytes,
            max_concurrent_predictions=r.max_concurrent_predictions,
            max_upload_bytes=r.max_upload_bytes,
            default_alias=r.default_alias,
            states=tuple((s.name, s.unit) for s in r.states),
            inputs=tuple((s.name, s.unit) for s in r.inputs),
            outputs=tuple((s.name, s.unit) for s in r.outputs),
            default_outputs=tuple(r.default_outputs),
        )

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
    ) -> twin_pb2.PredictRequest:
        """The PredictRequest :meth:`predict` sends, as a message."""
        encoding = _encoding(precision)
        return twin_pb2.PredictRequest(
            model=_ref(model, version, alias),
            x0=encode_array(x0, encoding),
            u=encode_array(u, encoding),
            outputs=list(outputs),
            include_members=include_members,
            encoding=encoding,
        )

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
        timeout: float | None = None,
    ) -> Prediction:
        """Roll ``model`` out from ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)``.

        The version is ``version`` if given, else the target of ``alias`` (default "champion") now;
        ``Prediction.model`` says which served. ``outputs`` names the algebraic outputs (empty: the server's
        default set); ``include_members`` also returns every member's trajectory. ``precision`` is how the
        arrays travel: ``"float64"`` (exact) or ``"float32"`` (half the bytes both ways, for large batches:
        the server predicts from the inputs rounded to float32, and the results are rounded to float32).
        """
        encoding = _encoding(precision)
        header = twin_pb2.PredictRequest(
            model=_ref(model, version, alias), outputs=list(outputs), include_members=include_members, encoding=encoding
        )
        data = serialize_predict_request(header, x0, u, encoding)
        return self._predict_call(data, timeout=self._t(timeout))

    def pin(self, model: str, alias: str | None = None) -> PinnedModel:
        """The version ``alias`` (default "champion") of ``model`` points at now, for a series of calls that
        must all use the same weights."""
        info = self.get_model(model, alias=alias)
        return PinnedModel(self, model, info.model.version)

    # -- registry: reading -------------------------------------------------------------------------------------

    def list_models(self) -> tuple[list[ModelSummary], int]:
        """Every model, and the registry revision the list reflects."""
        r = self._registry.ListModels(twin_pb2.ListModelsRequest(), timeout=self.timeout)
        return [ModelSummary.from_pb(m) for m in r.models], r.revision

    def get_model(self, model: str, *, version: int | None = None, alias: str | None = None) -> VersionInfo:
        """Metadata of one version (default: the champion's)."""
        r = self._registry.GetModel(twin_pb2.GetModelRequest(model=_ref(model, version, alias)), timeout=self.timeout)
        a = r.architecture
        return VersionInfo(
            model=ModelId.from_pb(r.model),
            aliases=tuple(r.aliases),
            kind=r.kind,
            prior=r.prior,
            n_members=r.n_members,
            hidden=tuple(a.hidden),
            skip=a.skip,
            blocks=a.blocks,
            dt=r.dt_s,
            exactly_sparse=r.exactly_sparse,
            nonzero_weights=r.nonzero_weights,
            total_weights=r.total_weights,
            created=r.created,
            registered=r.registered,
            description=r.description,
            weights_sha256=r.weights_sha256,
            loaded=r.loaded,
        )

    def explain(self, model: str, *, version: int | None = None, alias: str | None = None) -> ModelExplanation:
        """Sparsity, dependency, metrics and provenance of one version."""
        req = twin_pb2.ExplainModelRequest(model=_ref(model, version, alias))
        r = self._registry.ExplainModel(req, timeout=self.timeout)
        return ModelExplanation(
            model=ModelId.from_pb(r.model),
            layers=tuple(LayerSparsity(x.n_in, x.n_out, x.total, x.nonzero, x.above_threshold) for x in r.layers),
            weight_threshold=r.weight_threshold,
            path=Dependency.from_pb(r.path_dependency),
            thresholded_path=Dependency.from_pb(r.thresholded_path_dependency),
            jacobian=Dependency.from_pb(r.jacobian_dependency),
            metrics=json.loads(r.metrics_json) if r.metrics_json else None,
            provenance=json.loads(r.provenance_json) if r.provenance_json else {},
        )

    def export(self, model: str, *, version: int | None = None, alias: str | None = None) -> ExportedModel:
        """The two model files of one version; ``.load()`` rebuilds the surrogate."""
        req = twin_pb2.ExportModelRequest(model=_ref(model, version, alias))
        r = self._registry.ExportModel(req, timeout=self.timeout)
        return ExportedModel(ModelId.from_pb(r.model), r.manifest_json, r.weights)

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
