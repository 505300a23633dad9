"""The KServe v2 / Open Inference Protocol gRPC endpoint of the twin: ``inference.GRPCInferenceService`` beside
``alutwin.v1.PredictionService``, so that standard clients (``tritonclient.grpc``, KServe's and MLServer's) can
run the twin's predictions. The contract is ``proto/alutwin/kserve/grpc_predict_v2.proto``.

How the twin maps onto the protocol:

- **Models.** A model is a twin model of the registry. ``model_version`` ``""`` means the alias ``champion``, or
  the alias a ModelInfer names in its parameter ``alias``; ``"N"`` means version N (pinned).
- **ServerLive** is true while the process answers; **ServerReady** is the health of
  ``alutwin.v1.PredictionService`` (SERVING: a model can serve and the server is not draining). **ModelReady**:
  the model and version resolve and load. **ServerMetadata**: name ``alutwin-twin``, the alutwin version, no
  extensions.
- **ModelMetadata**: platform ``alutwin``, the versions registered, inputs ``x0`` FP64 ``[-1, 8]`` and ``u`` FP64
  ``[-1, -1, 5]``, outputs ``mean`` and ``spread`` FP64 ``[-1, -1, 8]``, ``outputs`` FP64 ``[-1, -1, -1]`` (one
  column per algebraic output asked for) and ``members`` FP64 ``[-1, -1, -1, 8]``.
- **ModelInfer** computes what Predict computes, within the same limits (:func:`check_prediction`,
  :func:`check_envelope`), with :func:`predict` in the rollout pool: its arrays equal Predict's bit for bit.
  Inputs ``x0`` (B, 8) and ``u`` (B, H, 5) come as FP64 or FP32 (widened to float64), in ``contents`` or in
  ``raw_input_contents``. Request parameters: ``outputs`` (string, comma-separated names of the algebraic
  outputs; default :data:`~twin.serving.prediction.DEFAULT_OUTPUTS`), ``stride`` (int64: every stride-th step) and ``alias`` (string).
  The requested outputs select the tensors (none: mean, spread and outputs). Outputs are FP64, or FP32 when
  both inputs were FP32 (the rounding of Predict's ``ARRAY_ENCODING_RAW_F32``); they go in
  ``raw_output_contents`` when the request used ``raw_input_contents`` (as tritonclient does), else in typed
  ``contents``. Response parameters: ``served_version``, ``served_alias``, ``n_members``, ``dt_s``, ``stride``
  and ``output_names`` (the columns of ``outputs``, comma-separated).
- **Errors**: INVALID_ARGUMENT naming the field (unknown tensor or parameter, wrong datatype or shape, limits),
  NOT_FOUND for an unknown model, version or alias; the rest as Predict (:mod:`twin.serving.runtime`).

The drain gate covers ModelReady, ModelMetadata and ModelInfer (UNAVAILABLE while draining); ServerLive,
ServerReady and ServerMetadata stay answered, as health checks do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

import alutwin
from alutwin.kserve import grpc_predict_v2_pb2 as pb
from alutwin.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from alutwin.v1 import twin_pb2
from plant.signals import N_INPUTS, N_STATES
from twin.registry import InvalidRequest, NotFound, NotServable
from twin.serving.prediction import (
    Limits,
    check_envelope,
    check_output_names,
    check_prediction,
    predict,
    response_fields,
)
from twin.serving.runtime import TwinRuntime, unary

__all__ = [
    "INPUT_SHAPES",
    "KSERVE_SERVICE",
    "OUTPUT_SHAPES",
    "PARAMETERS",
    "PLATFORM",
    "SERVER_NAME",
    "KServeServicer",
    "add_kserve_service",
]

KSERVE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""``"inference.GRPCInferenceService"``."""
PLATFORM = "alutwin"
SERVER_NAME = "alutwin-twin"
INPUT_SHAPES: Mapping[str, tuple[int, ...]] = {"x0": (-1, N_STATES), "u": (-1, -1, N_INPUTS)}
"""The inputs of every model, with their shapes (-1: any length)."""
OUTPUT_SHAPES: Mapping[str, tuple[int, ...]] = {
    "mean": (-1, -1, N_STATES),
    "spread": (-1, -1, N_STATES),
    "outputs": (-1, -1, -1),
    "members": (-1, -1, -1, N_STATES),
}
"""The outputs of every model, in response order, with their shapes."""
PARAMETERS: Mapping[str, str] = {"outputs": "string_param", "stride": "int64_param", "alias": "string_param"}
"""The ModelInfer request parameters, with the InferParameter field each is given in."""
_DEFAULT_TENSORS = ("mean", "spread", "outputs")
_DATATYPES: Mapping[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
_CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents"}
_NO_DEADLINE_S = 1e7  # a call's time_remaining() above this means it has no deadline


def _names(items: Sequence[str]) -> str:
    return "[" + ", ".join(repr(i) for i in items) + "]"


def _model_ref(name: str, version: str, alias: str = "", *, prefix: str = "model_") -> twin_pb2.ModelRef:
    """The ModelRef of a KServe model name and version (``""``: ``alias``, or the champion; ``"N"``: version N);
    ``prefix`` + ``name``/``version`` are the request's fields, as errors name them."""
    if not name:
        raise InvalidRequest(f"{prefix}name is empty")
    if not version:
        return twin_pb2.ModelRef(name=name, alias=alias) if alias else twin_pb2.ModelRef(name=name)
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise InvalidRequest(
            f"{prefix}version {version[:40]!r} is not a version number (1, 2, ...) or empty (the champion)"
        )
    if alias:
        raise InvalidRequest(f"give {prefix}version ({version!r}) or the parameter 'alias' ({alias[:64]!r}), not both")
    return twin_pb2.ModelRef(name=name, version=int(version))


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, bool | int | float | str]:
    """The values of the request parameters (:data:`PARAMETERS`); InvalidRequest for another name or kind."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        kind = PARAMETERS.get(key)
        if kind is None:
            raise InvalidRequest(f"parameters[{key[:64]!r}] is not one of {_names(list(PARAMETERS))}")
        which = value.WhichOneof("parameter_choice")
        if which != kind and not (kind == "int64_param" and which == "uint64_param"):
            raise InvalidRequest(f"parameters[{key!r}] must be given as {kind}, got {which or 'no value'}")
        out[key] = getattr(value, which)
    return out


def _decode(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, where: str) -> np.ndarray:
    """One input tensor as float64 of its shape, from ``raw`` bytes or else its typed contents."""
    dtype = _DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidRequest(
            f"{where}.datatype is {tensor.datatype[:16]!r}; it must be one of {_names(list(_DATATYPES))}"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{where}.shape {list(shape)} has a negative length")
    n = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidRequest(f"{where} has contents although the request uses raw_input_contents")
        if len(raw) != n * dtype.itemsize:
            raise InvalidRequest(
                f"{where}: raw_input_contents holds {len(raw)} bytes; shape {list(shape)} of {tensor.datatype} "
                f"needs {n * dtype.itemsize}"
            )
        data = np.frombuffer(raw, dtype)
    else:
        field = _CONTENTS[tensor.datatype]
        values = getattr(tensor.contents, field)
        if len(values) != n:
            raise InvalidRequest(f"{where}.contents.{field} holds {len(values)} values; shape {list(shape)} needs {n}")
        data = np.asarray(values, dtype)
    return data.astype(np.float64).reshape(shape)


def _inputs(request: pb.ModelInferRequest) -> tuple[np.ndarray, np.ndarray, bool]:
    """``x0`` (B, 8), ``u`` (B, H, 5) as float64, and whether both came as FP32."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents holds {len(raws)} tensors for {len(request.inputs)} inputs; give one per input"
        )
    arrays: dict[str, np.ndarray] = {}
    datatypes: list[str] = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name[:64]!r})"
        if tensor.name not in INPUT_SHAPES:
            raise InvalidRequest(f"inputs[{i}].name {tensor.name[:64]!r} is not one of {_names(list(INPUT_SHAPES))}")
        if tensor.name in arrays:
            raise InvalidRequest(f"inputs[{i}]: the input {tensor.name!r} is given twice")
        arrays[tensor.name] = _decode(tensor, raws[i] if raws else None, where)
        datatypes.append(tensor.datatype)
    missing = [n for n in INPUT_SHAPES if n not in arrays]
    if missing:
        raise InvalidRequest(f"inputs: {_names(missing)} missing; a ModelInfer takes {_names(list(INPUT_SHAPES))}")
    return arrays["x0"], arrays["u"], all(d == "FP32" for d in datatypes)


def _requested(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The output tensors to return, in request order (none requested: mean, spread and outputs)."""
    names: list[str] = []
    for i, out in enumerate(request.outputs):
        if out.name not in OUTPUT_SHAPES:
            raise InvalidRequest(f"outputs[{i}].name {out.name[:64]!r} is not one of {_names(list(OUTPUT_SHAPES))}")
        if out.name in names:
            raise InvalidRequest(f"outputs[{i}]: the output {out.name!r} is requested twice")
        if out.parameters:
            raise InvalidRequest(f"outputs[{i}] ({out.name!r}): output parameters are not supported")
        names.append(out.name)
    return tuple(names) or _DEFAULT_TENSORS


def _stride(value: bool | int | float | str) -> int:
    stride = int(value)  # an int64 or uint64 parameter (checked by _parameters)
    if stride < 0:
        raise InvalidRequest(f"parameters['stride'] is {stride}; it must be >= 1 (0 or 1: every step)")
    return max(stride, 1)


def _param(value: int | float | str) -> pb.InferParameter:
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(double_param=value)


def _tensor_metadata(shapes: Mapping[str, tuple[int, ...]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=n, datatype="FP64", shape=s) for n, s in shapes.items()]


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a :class:`~twin.serving.runtime.TwinRuntime` (see the module's
    docstring for the mapping).

    Parameters
    ----------
    runtime : TwinRuntime
        The registry and the rollout pool (shared with PredictionService).
    ready : callable, optional
        ``ready()``: ServerReady's answer (the server passes the health of PredictionService); default: at least
        one alias of one model can serve.
    """

    def __init__(self, runtime: TwinRuntime, ready: Callable[[], bool] | None = None) -> None:
        self.runtime = runtime
        self.limits = Limits.of(runtime.config)
        self._ready = ready if ready is not None else runtime.registry.servable

    @unary
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self._ready()))

    @unary
    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=alutwin.__version__, extensions=[])

    @unary
    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        ref = _model_ref(request.name, request.version, prefix="")
        try:
            self.runtime.resolve(ref)
        except (NotFound, NotServable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @unary
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        ref = _model_ref(request.name, request.version, prefix="")
        record = self.runtime.registry.record(ref.name)  # NotFound, listing the models
        versions = [str(v) for v in record.versions]
        if ref.WhichOneof("selector") == "version" and ref.version not in record.versions:
            raise NotFound(f"model {ref.name!r} has no version {ref.version}; its versions are [{', '.join(versions)}]")
        return pb.ModelMetadataResponse(
            name=ref.name,
            versions=versions,
            platform=PLATFORM,
            inputs=_tensor_metadata(INPUT_SHAPES),
            outputs=_tensor_metadata(OUTPUT_SHAPES),
        )

    @unary
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        rt = self.runtime
        params = _parameters(request.parameters)
        alias = str(params.get("alias", ""))
        served, model = rt.resolve(_model_ref(request.model_name, request.model_version, alias))
        x0, u, fp32 = _inputs(request)
        names = check_output_names([n.strip() for n in str(params.get("outputs", "")).split(",") if n.strip()])
        tensors = _requested(request)
        fields = response_fields(tensors, False)
        stride = _stride(params.get("stride", 1))
        dtype = _DATATYPES["FP32" if fp32 else "FP64"]
        check_prediction(
            x0, u, served.n_members, len(names), False, self.limits, dtype.itemsize, fields=fields, stride=stride
        )
        margin = rt.config.envelope_margin
        warnings = check_envelope(x0, u, served, rt.config.max_envelope_excess, margin)
        remaining = context.time_remaining()  # huge (not None) when the call has no deadline
        result = rt.run(
            lambda: predict(
                served, x0, u, names, fields=fields, stride=stride, warnings=warnings, envelope_margin=margin
            ),
            remaining if remaining < _NO_DEADLINE_S else None,
        )
        response = pb.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
        arrays = result.arrays()
        for name in tensors:
            self._add_output(response, name, arrays[name], dtype, raw=bool(request.raw_input_contents))
        reported: dict[str, int | float | str] = {
            "served_version": served.version,
            "served_alias": model.alias,
            "n_members": served.n_members,
            "dt_s": float(served.dt),
            "stride": stride,
            "output_names": ",".join(names),
        }
        for key, value in reported.items():
            response.parameters[key].CopyFrom(_param(value))
        return response

    @staticmethod
    def _add_output(
        response: pb.ModelInferResponse, name: str, array: np.ndarray, dtype: np.dtype[Any], *, raw: bool
    ) -> None:
        """Append the output tensor ``name``: ``array`` as ``dtype``, in raw_output_contents or typed contents."""
        data = np.ascontiguousarray(array, dtype=dtype)
        datatype = "FP32" if dtype.itemsize == 4 else "FP64"
        tensor = response.outputs.add(name=name, datatype=datatype, shape=data.shape)
        if raw:
            response.raw_output_contents.append(data.tobytes())
        else:
            getattr(tensor.contents, _CONTENTS[datatype]).extend(data.ravel().tolist())


def add_kserve_service(servicer: KServeServicer, server: grpc.Server) -> None:
    """Add ``inference.GRPCInferenceService`` (the KServe v2 protocol) to ``server``."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
