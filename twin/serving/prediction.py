"""Predictions: what one Predict may ask for (:class:`Limits`, :func:`check_prediction`), what it computes in
process (:func:`predict`), and ``alutwin.v1.PredictionService``, whose servicer runs it in the rollout pool.

Predict takes its request and returns its response as wire bytes (:func:`alutwin.codec.parse_predict_request`,
:func:`alutwin.codec.serialize_predict_response`: one copy of the arrays instead of three), so its handler is
registered without deserialiser and serialiser (:func:`add_prediction_service`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from alutwin.codec import parse_predict_request, serialize_predict_response, signal_to_pb
from alutwin.rpc import request_type
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from identification.rollout import OUTPUT_ORDER
from plant.physics import OUTPUT_FUNCTIONS
from plant.potline import OUTPUTS
from plant.signals import INPUTS, N_INPUTS, N_STATES, STATES
from twin.config import TwinConfig
from twin.registry import DEFAULT_ALIAS, InvalidRequest, RegistryError, ServedModel
from twin.results import EnvelopeExcess, ScenarioValidity
from twin.serving.runtime import TwinRuntime, unary
from twin.serving.validity import envelope_box, input_warnings, scenario_validity

__all__ = [
    "ARRAY_FIELDS",
    "DEFAULT_OUTPUTS",
    "OUTPUT_FUNCTIONS",
    "PREDICTION_SERVICE",
    "Limits",
    "PredictionResult",
    "PredictionServicer",
    "add_prediction_service",
    "check_envelope",
    "check_output_names",
    "check_prediction",
    "compute_precision",
    "predict",
    "response_fields",
]

PREDICTION_SERVICE = twin_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
"""``"alutwin.v1.PredictionService"``."""

_OUTPUT_INDEX = {name: i for i, name in enumerate(OUTPUT_ORDER)}
DEFAULT_OUTPUTS = ("superheat", "alumina_pct", "alf3_pct", "cell_voltage")
"""The algebraic outputs a Predict returns when it names none."""

ARRAY_FIELDS = ("mean", "spread", "outputs", "members")
"""The arrays of a PredictResponse a field mask can name."""
_DEFAULT_FIELDS = frozenset({"mean", "spread", "outputs"})
_NO_DEADLINE_S = 1e7  # a call's time_remaining() above this means it has no deadline
_RESPONSE_OVERHEAD = 4096  # bytes of a PredictResponse besides its arrays and validity (a generous bound)
_VALIDITY_BYTES = 40  # bytes of one nominal ScenarioValidity entry on the wire (three -1 varints: 35)
_PRECISIONS: dict[int, str] = {
    twin_pb2.COMPUTE_PRECISION_UNSPECIFIED: "float64",
    twin_pb2.COMPUTE_PRECISION_FLOAT64: "float64",
    twin_pb2.COMPUTE_PRECISION_FLOAT32: "float32",
}


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
    mean: np.ndarray | None  # (B, S, 8), S = ceil((H + 1) / stride) steps returned; None: not asked for
    spread: np.ndarray | None  # (B, S, 8)
    output_names: tuple[str, ...]
    outputs: np.ndarray | None  # (B, S, n_outputs)
    members: np.ndarray | None  # (M, B, S, 8)
    stride: int = 1
    validity: tuple[ScenarioValidity, ...] = ()  # one per scenario, at every rollout step
    warnings: tuple[EnvelopeExcess, ...] = ()  # inputs outside the training envelope

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays filled, by response field name."""
        found = {n: getattr(self, n) for n in ARRAY_FIELDS}
        return {n: a for n, a in found.items() if a is not None}


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
    *,
    fields: frozenset[str] | None = None,
    stride: int = 1,
) -> None:
    """Refuse (InvalidRequest) a prediction of wrong shapes, non-finite values or beyond ``limits``
    (the response size counts the arrays ``fields`` selects, at every ``stride``-th step)."""
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
    if fields is None:
        fields = response_fields((), include_members)
    widths = {"mean": N_STATES, "spread": N_STATES, "outputs": n_outputs, "members": n_members * N_STATES}
    per_step = sum(widths[f] for f in fields)
    steps = -(-(h + 1) // max(stride, 1))
    size = item_bytes * b * steps * per_step + _RESPONSE_OVERHEAD + _VALIDITY_BYTES * b
    if size > limits.max_message_bytes:
        raise InvalidRequest(
            f"the response would take about {size} bytes, more than this server's max_message_bytes "
            f"({limits.max_message_bytes}); ask for fewer scenarios, a shorter horizon"
            + (" or no member trajectories" if "members" in fields else "")
            + ", a larger stride or fewer fields"
        )


def response_fields(paths: Sequence[str], include_members: bool) -> frozenset[str]:
    """The arrays a Predict returns: the field mask's ``paths`` (empty: mean, spread and outputs), plus members
    when ``include_members``; InvalidRequest for a path that is not one of :data:`ARRAY_FIELDS`."""
    for p in paths:
        if p not in ARRAY_FIELDS:
            raise InvalidRequest(f"field_mask path {p[:80]!r} is not one of {list(ARRAY_FIELDS)}")
    fields = frozenset(paths) or _DEFAULT_FIELDS
    return fields | {"members"} if include_members else fields


def check_envelope(
    x0: np.ndarray, u: np.ndarray, served: ServedModel, max_excess: float, margin: float = 0.1
) -> tuple[EnvelopeExcess, ...]:
    """The inputs more than ``margin`` envelope widths outside ``served``'s training envelope; InvalidRequest
    when one lies more than ``max_excess`` widths outside (0: never)."""
    warnings = tuple(input_warnings(x0, u, served.surrogate.envelope, margin))
    if max_excess > 0:
        for w in warnings:
            if w.excess > max_excess:
                at = f"[{w.scenario}]" if w.array == "x0" else f"[{w.scenario}, {w.step}]"
                raise InvalidRequest(
                    f"{w.array}{at} {w.signal} = {w.worst_value:.6g} lies {w.excess:.3g} envelope widths outside "
                    f"the model's training range [{w.low:.6g}, {w.high:.6g}]; this server refuses more than "
                    f"{max_excess:g}"
                )
    return warnings


def compute_precision(value: int) -> str:
    """The rollout engine's ``precision`` for a PredictRequest's ``precision`` (UNSPECIFIED: float64);
    InvalidRequest for a value the contract does not define."""
    if value not in _PRECISIONS:
        names = [twin_pb2.ComputePrecision.Name(v) for v in _PRECISIONS]
        raise InvalidRequest(f"precision = {value} is not a ComputePrecision; expected one of {names}")
    return _PRECISIONS[value]


def check_output_names(requested: Sequence[str]) -> tuple[str, ...]:
    """The outputs a Predict asks for (:data:`DEFAULT_OUTPUTS` when none); InvalidRequest for an unknown or
    repeated name."""
    names = tuple(requested) or DEFAULT_OUTPUTS
    for n in names:
        if n not in OUTPUT_FUNCTIONS:
            raise InvalidRequest(f"unknown output {n[:80]!r}; valid outputs are {list(OUTPUT_FUNCTIONS)}")
    if len(set(names)) != len(names):
        raise InvalidRequest(f"outputs {list(names)} names an output twice")
    return names


def predict(
    served: ServedModel,
    x0: np.ndarray,
    u: np.ndarray,
    output_names: Sequence[str] = DEFAULT_OUTPUTS,
    include_members: bool = False,
    *,
    fields: frozenset[str] | None = None,
    stride: int = 1,
    warnings: tuple[EnvelopeExcess, ...] | None = None,
    envelope_margin: float = 0.1,
    precision: str = "float64",
) -> PredictionResult:
    """What Predict computes, in process: every member's rollout, their mean and spread, and the algebraic
    outputs of the mean (:meth:`identification.rollout.RolloutEngine.simulate_summary`, the network layers in
    ``precision``: ``"float64"`` or ``"float32"``), with each scenario's validity at every step
    (:func:`twin.serving.validity.scenario_validity`, from where the engine saw the members and the mean
    leave) and the inputs outside the training envelope; the arrays ``fields`` selects (default
    :func:`response_fields`), at every ``stride``-th step."""
    if fields is None:
        fields = response_fields((), include_members)
    envelope = served.surrogate.envelope
    box = envelope_box(envelope, envelope_margin)  # the engine notes where the mean leaves it
    s = served.engine.simulate_summary(x0, u, members="members" in fields, precision=precision, box=box)
    validity = scenario_validity(
        s.mean,
        s.spread,
        served.n_members,
        envelope,
        lambda idx: served.engine.simulate(x0[idx], u[idx], precision),
        s.members,
        margin=envelope_margin,
        exits=s.exits,
    )
    if warnings is None:
        warnings = tuple(input_warnings(x0, u, envelope, envelope_margin))
    k = max(int(stride), 1)

    def pick(name: str, a: np.ndarray | None) -> np.ndarray | None:
        if name not in fields or a is None:
            return None
        return a if k == 1 else a[..., ::k, :]

    outputs = None
    if "outputs" in fields:
        idx = [_OUTPUT_INDEX[n] for n in output_names]
        outputs = s.outputs[..., idx]  # (B, H + 1, n_outputs)
    return PredictionResult(
        served,
        pick("mean", s.mean),
        pick("spread", s.spread),
        tuple(output_names),
        pick("outputs", outputs),
        pick("members", s.members),
        k,
        tuple(validity),
        warnings,
    )


def _item_bytes(encoding: int) -> int:
    return 4 if encoding == twin_pb2.ARRAY_ENCODING_RAW_F32 else 8


class PredictionServicer(twin_pb2_grpc.PredictionServiceServicer):
    """Converts PredictionService messages to :func:`predict` calls in the rollout pool and back."""

    def __init__(self, runtime: TwinRuntime) -> None:
        self.runtime = runtime
        self.limits = Limits.of(runtime.config)

    @unary
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
            served_versions=self._served_versions(),
            response_overhead_bytes=_RESPONSE_OVERHEAD,
            max_envelope_excess=cfg.max_envelope_excess,
        )

    def _served_versions(self) -> list[twin_pb2.ServedVersion]:
        """Every version an alias serves now, with its aliases and ensemble size."""
        registry = self.runtime.registry
        found: dict[tuple[str, int], tuple[ServedModel, list[str]]] = {}
        for name, alias, version in registry.active():
            try:
                served = registry.resolve(name, alias=alias)
            except RegistryError:  # moved or unloadable since: not served now
                continue
            found.setdefault((name, version), (served, []))[1].append(alias)
        return [
            twin_pb2.ServedVersion(
                name=name,
                version=version,
                aliases=sorted(aliases),
                n_members=served.n_members,
                kind=served.loaded.kind,
                has_envelope=served.surrogate.envelope is not None,
            )
            for (name, version), (served, aliases) in sorted(found.items())
        ]

    @unary
    @request_type(twin_pb2.PredictRequest)
    def Predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        rt = self.runtime
        try:
            header, x0, u = parse_predict_request(request)
        except (ValueError, DecodeError) as exc:
            raise InvalidRequest(str(exc) if isinstance(exc, ValueError) else "not a PredictRequest") from None
        names = check_output_names(header.outputs)
        fields = response_fields(header.field_mask.paths, header.include_members)
        precision = compute_precision(header.precision)
        stride = max(header.stride, 1)
        served, model = rt.resolve(header.model)
        check_prediction(
            x0, u, served.n_members, len(names), False, self.limits, _item_bytes(header.encoding),
            fields=fields, stride=stride,
        )  # fmt: skip
        margin = rt.config.envelope_margin
        warnings = check_envelope(x0, u, served, rt.config.max_envelope_excess, margin)
        remaining = context.time_remaining()  # huge (not None) when the call has no deadline
        timeout = remaining if remaining < _NO_DEADLINE_S else None
        result = rt.run(
            lambda: predict(
                served, x0, u, names, fields=fields, stride=stride, warnings=warnings, envelope_margin=margin,
                precision=precision,
            ),
            timeout,
        )  # fmt: skip
        response = twin_pb2.PredictResponse(
            model=model.to_pb(),
            output_names=names,
            n_members=served.n_members,
            dt_s=served.dt,
            stride=stride,
            validity=[v.to_pb() for v in result.validity],
            input_warnings=[w.to_pb() for w in result.warnings],
            envelope_known=served.surrogate.envelope is not None,
        )
        return serialize_predict_response(response, result.arrays(), header.encoding)  # see add_prediction_service


def add_prediction_service(servicer: PredictionServicer, server: grpc.Server) -> None:
    """What the generated ``add_PredictionServiceServicer_to_server`` does, except that Predict's handler has
    neither deserialiser nor serialiser: it takes and returns wire bytes."""
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
