"""The twin's result types, each defined once and used by the registry, the servicers and the client, with its
protobuf conversions (``to_pb`` and ``from_pb``) beside it.

- :class:`ModelId` (``ResolvedModel``): which version served a call.
- :class:`Prediction` (``PredictResponse``, through :mod:`alutwin.codec`'s wire fast path).
- :class:`ServingInfo` (``ServingInfo``): a server's limits and signal tables.
- :class:`ModelSummary` (``ModelSummary``) and :class:`VersionInfo` (``ModelVersionInfo``): what the registry
  holds.
- :class:`LayerSparsity`, :class:`Dependency` and :class:`ModelExplanation` (``ModelExplanation``): why a model
  predicts what it does.
- :class:`ExportedModel` (``ExportModelResponse``): a version's two files.
- :class:`EventType` and :class:`RegistryEvent` (``RegistryEvent``): changes of the registry.

No gRPC and no server code here: the client imports this module, and so does the server.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from alutwin.codec import iso_of_timestamp, split_predict_response, timestamp_of_iso, timestamp_of_ms
from alutwin.v1 import twin_pb2
from identification.modelfile import LoadedModel, load_model_bytes
from plant.signals import INPUT_NAMES, STATE_NAMES

__all__ = [
    "DEPENDENCY_COLS",
    "DEPENDENCY_ROWS",
    "MAX_DESCRIPTION",
    "Dependency",
    "EnvelopeExcess",
    "EventType",
    "ExportedModel",
    "LayerSparsity",
    "ModelExplanation",
    "ModelId",
    "ModelSummary",
    "Prediction",
    "RegistryEvent",
    "ScenarioValidity",
    "ServedVersion",
    "ServingInfo",
    "VersionInfo",
]

DEPENDENCY_ROWS = tuple(f"d{n}/dt" for n in STATE_NAMES)
"""Row names of a dependency matrix: the derivatives of the 8 states."""
DEPENDENCY_COLS = (*STATE_NAMES, *INPUT_NAMES)
"""Column names of a dependency matrix: the 8 states and 5 inputs a derivative may depend on."""
MAX_DESCRIPTION = 1000
"""Characters a version's description may have (the registry refuses longer ones; the re-fit worker cuts its own)."""


@dataclass(frozen=True)
class ModelId:
    """Which version served a call (``alias`` is the alias the call named, "" for a pinned version)."""

    name: str
    version: int
    alias: str = ""

    @classmethod
    def from_pb(cls, msg: twin_pb2.ResolvedModel) -> ModelId:
        return cls(msg.name, msg.version, msg.alias)

    def to_pb(self) -> twin_pb2.ResolvedModel:
        return twin_pb2.ResolvedModel(name=self.name, version=self.version, alias=self.alias)


@dataclass(frozen=True)
class ScenarioValidity:
    """Where one scenario's prediction stops being trustworthy (``alutwin.v1.ScenarioValidity``); steps are
    rollout steps, -1: never."""

    domain_exit_step: int = -1
    domain_reason: str = ""
    envelope_exit_step: int = -1
    envelope_signals: tuple[str, ...] = ()
    diverged_members: tuple[int, ...] = ()
    first_divergence_step: int = -1

    @property
    def ok(self) -> bool:
        """The mean stays in the valid domain and the training envelope, and no member diverges."""
        return self.domain_exit_step < 0 and self.envelope_exit_step < 0 and not self.diverged_members

    @classmethod
    def from_pb(cls, m: twin_pb2.ScenarioValidity) -> ScenarioValidity:
        return cls(
            m.domain_exit_step,
            m.domain_reason,
            m.envelope_exit_step,
            tuple(m.envelope_signals),
            tuple(m.diverged_members),
            m.first_divergence_step,
        )

    def to_pb(self) -> twin_pb2.ScenarioValidity:
        return twin_pb2.ScenarioValidity(
            domain_exit_step=self.domain_exit_step,
            domain_reason=self.domain_reason,
            envelope_exit_step=self.envelope_exit_step,
            envelope_signals=self.envelope_signals,
            diverged_members=self.diverged_members,
            first_divergence_step=self.first_divergence_step,
        )


@dataclass(frozen=True)
class EnvelopeExcess:
    """Values of one input signal outside the model's training envelope (``alutwin.v1.EnvelopeWarning``)."""

    array: str  # "x0" or "u"
    signal: str
    count: int  # values outside
    worst_value: float
    low: float
    high: float
    excess: float  # envelope widths outside
    scenario: int
    step: int

    @classmethod
    def from_pb(cls, m: twin_pb2.EnvelopeWarning) -> EnvelopeExcess:
        return cls(m.array, m.signal, m.count, m.worst_value, m.low, m.high, m.excess, m.scenario, m.step)

    def to_pb(self) -> twin_pb2.EnvelopeWarning:
        return twin_pb2.EnvelopeWarning(
            array=self.array,
            signal=self.signal,
            count=self.count,
            worst_value=self.worst_value,
            low=self.low,
            high=self.high,
            excess=self.excess,
            scenario=self.scenario,
            step=self.step,
        )


@dataclass(frozen=True)
class Prediction:
    """A Predict result.

    Attributes
    ----------
    model : the version that served it.
    mean : (B, S, 8) ensemble mean of the states; ``mean[:, 0]`` is ``x0``. S = H + 1 steps, or
        ceil((H + 1) / stride) with a stride. None when the field mask left it out.
    spread : (B, S, 8) standard deviation over the members, or None.
    outputs : algebraic output name -> (B, S), evaluated on the ensemble mean (empty when left out).
    members : (M, B, S, 8) every member's trajectory, or None unless asked for.
    n_members : M.
    dt : time of one rollout step, s (returned steps are ``stride * dt`` apart).
    stride : the stride applied (1: every step).
    validity : one :class:`ScenarioValidity` per scenario (checked at every rollout step).
    input_warnings : the inputs outside the model's training envelope.
    envelope_known : False when the model has no training envelope (no envelope checks were made).

    The arrays of a prediction received over gRPC are read-only views of the response (copy to modify).
    """

    model: ModelId
    mean: np.ndarray | None
    spread: np.ndarray | None
    outputs: dict[str, np.ndarray]
    members: np.ndarray | None
    n_members: int
    dt: float
    stride: int = 1
    validity: tuple[ScenarioValidity, ...] = ()
    input_warnings: tuple[EnvelopeExcess, ...] = ()
    envelope_known: bool = False

    def require_mean(self) -> np.ndarray:
        """The ensemble mean; ValueError when the request's field mask left it out."""
        if self.mean is None:
            raise ValueError("this prediction holds no mean: the request's field mask left it out")
        return self.mean

    @classmethod
    def build(cls, header: twin_pb2.PredictResponse, arrays: dict[str, np.ndarray]) -> Prediction:
        """From a response's other fields and its arrays by field name (each may be absent)."""
        names = list(header.output_names)
        out = arrays.get("outputs")
        if out is not None and out.shape[-1] != len(names):
            raise ValueError(f"outputs has {out.shape[-1]} columns for {len(names)} output names")
        return cls(
            model=ModelId.from_pb(header.model),
            mean=arrays.get("mean"),
            spread=arrays.get("spread"),
            outputs={} if out is None else {n: out[..., i] for i, n in enumerate(names)},
            members=arrays.get("members"),
            n_members=header.n_members,
            dt=header.dt_s,
            stride=max(header.stride, 1),
            validity=tuple(ScenarioValidity.from_pb(v) for v in header.validity),
            input_warnings=tuple(EnvelopeExcess.from_pb(w) for w in header.input_warnings),
            envelope_known=header.envelope_known,
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Prediction:
        """From the wire bytes of a PredictResponse; float64 arrays are read-only views of ``data`` (no copy)."""
        return cls.build(*split_predict_response(data))


@dataclass(frozen=True)
class ServedVersion:
    """A version that serves through at least one alias, with its ensemble size (``alutwin.v1.ServedVersion``)."""

    name: str
    version: int
    aliases: tuple[str, ...]
    n_members: int
    kind: str
    has_envelope: bool


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
    served_versions: tuple[ServedVersion, ...] = ()
    response_overhead_bytes: int = 0
    max_envelope_excess: float = 0.0

    def response_bytes(
        self, b: int, h: int, m: int, n_outputs: int, fields: frozenset[str], stride: int = 1, item: int = 8
    ) -> int:
        """About how many bytes a PredictResponse takes (the formula of ``ServingInfo.response_overhead_bytes``)."""
        widths = {"mean": 8, "spread": 8, "outputs": n_outputs, "members": 8 * m}
        steps = -(-(h + 1) // max(stride, 1))
        return self.response_overhead_bytes + item * b * steps * sum(widths[f] for f in fields) + 40 * b

    @classmethod
    def from_pb(cls, r: twin_pb2.ServingInfo) -> ServingInfo:
        return cls(
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
            served_versions=tuple(
                ServedVersion(v.name, v.version, tuple(v.aliases), v.n_members, v.kind, v.has_envelope)
                for v in r.served_versions
            ),
            response_overhead_bytes=r.response_overhead_bytes,
            max_envelope_excess=r.max_envelope_excess,
        )


def _iso(message: Any, field: str, legacy: str) -> str:
    """A time as ISO 8601 text: the deprecated text field's ``legacy`` value as the server recorded it (servers
    still fill it, and it is exact), else ``message.<field>`` (a Timestamp) in UTC, else ""."""
    if legacy or not message.HasField(field):
        return str(legacy)
    return iso_of_timestamp(getattr(message, field))


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
            {v.version: (v.kind, _iso(v, "registered_at", v.registered), v.description) for v in m.versions},
            dict(m.aliases),
        )

    def to_pb(self) -> twin_pb2.ModelSummary:
        return twin_pb2.ModelSummary(
            name=self.name,
            versions=[
                twin_pb2.VersionSummary(
                    version=v,
                    kind=kind,
                    registered=registered,
                    description=description,
                    registered_at=timestamp_of_iso(registered),
                )
                for v, (kind, registered, description) in self.versions.items()
            ],
            aliases=self.aliases,
        )


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one version (``GetModel``); ``n_in``, ``hidden``, ``n_out``, ``skip`` and ``blocks`` are its
    architecture."""

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
    n_in: int
    n_out: int

    @classmethod
    def from_pb(cls, r: twin_pb2.ModelVersionInfo) -> VersionInfo:
        a = r.architecture
        return cls(
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
            created=_iso(r, "created_at", r.created),
            registered=_iso(r, "registered_at", r.registered),
            description=r.description,
            weights_sha256=r.weights_sha256,
            loaded=r.loaded,
            n_in=a.n_in,
            n_out=a.n_out,
        )

    def to_pb(self) -> twin_pb2.ModelVersionInfo:
        return twin_pb2.ModelVersionInfo(
            model=self.model.to_pb(),
            aliases=self.aliases,
            kind=self.kind,
            prior=self.prior,
            n_members=self.n_members,
            architecture=twin_pb2.Architecture(
                n_in=self.n_in, hidden=self.hidden, n_out=self.n_out, skip=self.skip, blocks=self.blocks
            ),
            dt_s=self.dt,
            exactly_sparse=self.exactly_sparse,
            nonzero_weights=self.nonzero_weights,
            total_weights=self.total_weights,
            created=self.created,
            registered=self.registered,
            description=self.description,
            weights_sha256=self.weights_sha256,
            loaded=self.loaded,
            created_at=timestamp_of_iso(self.created),
            registered_at=timestamp_of_iso(self.registered),
        )


@dataclass(frozen=True)
class LayerSparsity:
    """Weights of one layer, summed over the members: all of them, the non-zero ones, and those above the
    explanation's weight threshold."""

    n_in: int
    n_out: int
    total: int
    nonzero: int
    above_threshold: int

    @classmethod
    def from_pb(cls, x: twin_pb2.LayerSparsity) -> LayerSparsity:
        return cls(x.n_in, x.n_out, x.total, x.nonzero, x.above_threshold)

    def to_pb(self, layer: int) -> twin_pb2.LayerSparsity:
        return twin_pb2.LayerSparsity(
            layer=layer,
            n_in=self.n_in,
            n_out=self.n_out,
            total=self.total,
            nonzero=self.nonzero,
            above_threshold=self.above_threshold,
        )


@dataclass(frozen=True)
class Dependency:
    """``share`` (8, 13): share of members (0..1) whose derivative of state i (row) depends on state or input j
    (column); ``scores``: precision, recall, f1 and entries of the majority matrix (entries used by at least half
    the members) against the true structure."""

    share: np.ndarray  # (8, 13)
    scores: dict[str, float]
    rows: tuple[str, ...] = DEPENDENCY_ROWS
    cols: tuple[str, ...] = DEPENDENCY_COLS

    @classmethod
    def from_pb(cls, d: twin_pb2.DependencyMatrix) -> Dependency:
        s = d.scores
        return cls(
            np.array(d.share, dtype=np.float64).reshape(d.rows, d.cols),
            {"precision": s.precision, "recall": s.recall, "f1": s.f1, "entries": s.entries},
            tuple(d.row_names),
            tuple(d.col_names),
        )

    def to_pb(self) -> twin_pb2.DependencyMatrix:
        s = self.scores
        return twin_pb2.DependencyMatrix(
            rows=self.share.shape[0],
            cols=self.share.shape[1],
            share=self.share.ravel().tolist(),
            row_names=self.rows,
            col_names=self.cols,
            scores=twin_pb2.StructureScores(
                precision=s["precision"], recall=s["recall"], f1=s["f1"], entries=int(s["entries"])
            ),
        )


@dataclass(frozen=True)
class ModelExplanation:
    """Why a model predicts what it does (``ExplainModel``): sparsity per layer, input-output dependency three
    ways (weight paths, paths through weights above ``weight_threshold``, the data Jacobian at
    ``jacobian_points`` points), the manifest's metrics and provenance; ``model`` is the version explained
    (None for an explanation not yet tied to one)."""

    layers: tuple[LayerSparsity, ...]
    weight_threshold: float
    path: Dependency
    thresholded_path: Dependency
    jacobian: Dependency
    jacobian_points: int
    jacobian_rel_threshold: float
    metrics: dict[str, Any] | None
    provenance: dict[str, Any]
    model: ModelId | None = None

    @classmethod
    def from_pb(cls, r: twin_pb2.ModelExplanation) -> ModelExplanation:
        return cls(
            layers=tuple(LayerSparsity.from_pb(x) for x in r.layers),
            weight_threshold=r.weight_threshold,
            path=Dependency.from_pb(r.path_dependency),
            thresholded_path=Dependency.from_pb(r.thresholded_path_dependency),
            jacobian=Dependency.from_pb(r.jacobian_dependency),
            jacobian_points=r.jacobian_points,
            jacobian_rel_threshold=r.jacobian_rel_threshold,
            metrics=json.loads(r.metrics_json) if r.metrics_json else None,
            provenance=json.loads(r.provenance_json) if r.provenance_json else {},
            model=ModelId.from_pb(r.model),
        )

    def to_pb(self) -> twin_pb2.ModelExplanation:
        msg = twin_pb2.ModelExplanation(
            layers=[s.to_pb(i) for i, s in enumerate(self.layers)],
            weight_threshold=self.weight_threshold,
            path_dependency=self.path.to_pb(),
            thresholded_path_dependency=self.thresholded_path.to_pb(),
            jacobian_dependency=self.jacobian.to_pb(),
            jacobian_points=self.jacobian_points,
            jacobian_rel_threshold=self.jacobian_rel_threshold,
            metrics_json=json.dumps(self.metrics),
            provenance_json=json.dumps(self.provenance),
        )
        if self.model is not None:
            msg.model.CopyFrom(self.model.to_pb())
        return msg


@dataclass(frozen=True)
class ExportedModel:
    """A version's two model files, byte for byte; :meth:`load` validates and rebuilds the model."""

    model: ModelId
    manifest_json: bytes
    weights: bytes

    def load(self) -> LoadedModel:
        """The model (every check of :func:`identification.modelfile.load_model` applies)."""
        return load_model_bytes(self.manifest_json, self.weights)

    @classmethod
    def from_pb(cls, r: twin_pb2.ExportModelResponse) -> ExportedModel:
        return cls(ModelId.from_pb(r.model), r.manifest_json, r.weights)

    def to_pb(self) -> twin_pb2.ExportModelResponse:
        return twin_pb2.ExportModelResponse(
            model=self.model.to_pb(), manifest_json=self.manifest_json, weights=self.weights
        )


_EVENT_PREFIX = "REGISTRY_EVENT_TYPE_"


class EventType(str, enum.Enum):
    """Kinds of registry events; each equals its name as a string (``EventType.SNAPSHOT == "SNAPSHOT"``, and
    ``str()`` and f-strings give ``"SNAPSHOT"``), and :attr:`number` is its ``alutwin.v1.RegistryEventType``."""

    UNSPECIFIED = "UNSPECIFIED"  # what a message of an unknown kind reads as
    SNAPSHOT = "SNAPSHOT"
    VERSION_REGISTERED = "VERSION_REGISTERED"
    ALIAS_MOVED = "ALIAS_MOVED"
    ROLLED_BACK = "ROLLED_BACK"

    # the plain string, as enum.StrEnum (Python 3.11+) gives it; Enum's own would be "EventType.SNAPSHOT"
    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]  # typeshed: str's format_spec is positional-only

    @property
    def number(self) -> twin_pb2.RegistryEventType:
        # protobuf's stubs type Value() as a plain int
        return cast("twin_pb2.RegistryEventType", twin_pb2.RegistryEventType.Value(_EVENT_PREFIX + self.value))

    @classmethod
    def of_number(cls, number: int) -> EventType:
        try:
            return cls(twin_pb2.RegistryEventType.Name(number).removeprefix(_EVENT_PREFIX))
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True)
class RegistryEvent:
    """One change of the registry (a message of ``Watch``), or, for type SNAPSHOT, the whole registry at
    ``revision`` in ``models``."""

    revision: int
    type: EventType
    name: str = ""
    version: int = 0
    alias: str = ""
    previous_version: int = 0
    time_ms: int = 0
    models: tuple[ModelSummary, ...] = ()  # SNAPSHOT only

    @classmethod
    def from_pb(cls, e: twin_pb2.RegistryEvent) -> RegistryEvent:
        return cls(
            e.revision,
            EventType.of_number(e.type),
            e.name,
            e.version,
            e.alias,
            e.previous_version,
            e.time.ToMilliseconds() if e.HasField("time") else e.time_unix_ms,
            tuple(ModelSummary.from_pb(m) for m in e.models),
        )

    def to_pb(self) -> twin_pb2.RegistryEvent:
        return twin_pb2.RegistryEvent(
            revision=self.revision,
            type=self.type.number,
            name=self.name,
            version=self.version,
            alias=self.alias,
            previous_version=self.previous_version,
            time_unix_ms=self.time_ms,
            time=timestamp_of_ms(self.time_ms) if self.time_ms else None,
            models=[m.to_pb() for m in self.models],
        )
