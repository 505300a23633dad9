"""The real ``tritonclient.grpc`` against a twin's KServe v2 endpoint, for tests/twin/test_kserve.py.

It runs in its own process: tritonclient registers its own ``inference`` messages in protobuf's default pool,
which clash with alutwin's (duplicate symbols) in one process. So this script imports nothing of alutwin.

Usage: ``python kserve_triton_client.py`` with a JSON object on stdin: ``address``, ``model`` (registered with
versions 1 and 2, champion 1) and the scenarios ``x0`` (B, 8) and ``u`` (B, H, 5) as ``{"shape", "b64"}`` of
little-endian float64. It prints one JSON object: what each call answered (arrays as ``{"shape", "dtype",
"b64"}``, errors as ``{"status", "message"}``) and tritonclient's own message layout (``layout``).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

MESSAGES = (
    "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse", "ModelReadyRequest",
    "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse", "ModelMetadataRequest",
    "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse", "InferParameter", "InferTensorContents",
)  # fmt: skip
"""The messages of the KServe protocol (Triton's service has more)."""
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def layout() -> dict[str, Any]:
    """tritonclient's messages (nested ones under ``Outer.Inner``) as ``name -> [[field, number, type, label,
    type_name], ...]``, and the input and output types of the six methods."""
    fd = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(fd)
    messages: dict[str, list[list[Any]]] = {}

    def add(m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = prefix + m.name
        messages[name] = [[f.name, f.number, f.type, f.label, f.type_name] for f in m.field]
        for nested in m.nested_type:
            add(nested, name + ".")

    for m in fd.message_type:
        if m.name in MESSAGES:
            add(m, "")
    (service,) = [s for s in fd.service if s.name == "GRPCInferenceService"]
    methods = {m.name: [m.input_type, m.output_type] for m in service.method if m.name in METHODS}
    return {"package": fd.package, "messages": messages, "methods": methods}


def array_in(spec: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(spec["b64"]), "<f8").reshape(spec["shape"])


def array_out(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": a.dtype.str, "b64": base64.b64encode(a.tobytes()).decode()}


def tensor(name: str, a: np.ndarray, datatype: str) -> tc.InferInput:
    t = tc.InferInput(name, list(a.shape), datatype)
    t.set_data_from_numpy(np.ascontiguousarray(a, np.float32 if datatype == "FP32" else np.float64))
    return t


def infer(client: tc.InferenceServerClient, model: str, inputs: list[tc.InferInput], **kw: Any) -> dict[str, Any]:
    """One ModelInfer: every output tensor returned, and the response's parameters."""
    result = client.infer(model, inputs, **kw)
    response = result.get_response()
    params = {}
    for key, p in response.parameters.items():
        params[key] = getattr(p, p.WhichOneof("parameter_choice"))
    outputs = {o.name: array_out(result.as_numpy(o.name)) for o in response.outputs}
    return {"model_version": response.model_version, "id": response.id, "parameters": params, "outputs": outputs}


def attempt(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}


def main() -> int:
    job = json.load(sys.stdin)
    model, x0, u = job["model"], array_in(job["x0"]), array_in(job["u"])
    client = tc.InferenceServerClient(job["address"])
    fp64 = [tensor("x0", x0, "FP64"), tensor("u", u, "FP64")]
    out: dict[str, Any] = {
        "layout": layout(),
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_ready": client.is_model_ready(model),
        "model_ready_v2": client.is_model_ready(model, "2"),
        "model_ready_v9": client.is_model_ready(model, "9"),
        "unknown_ready": client.is_model_ready("no-such-model"),
        "metadata": client.get_model_metadata(model, as_json=True),
        "metadata_v2": client.get_model_metadata(model, "2", as_json=True),
        "default": infer(client, model, fp64, request_id="req-1"),
        "pinned": infer(
            client,
            model,
            fp64,
            model_version="2",
            outputs=[tc.InferRequestedOutput(n) for n in ("members", "outputs")],
            parameters={"outputs": "cell_voltage, superheat", "stride": 3},
        ),
        "fp32": infer(client, model, [tensor("x0", x0, "FP32"), tensor("u", u, "FP32")]),
        "unknown_model": attempt(lambda: infer(client, "no-such-model", fp64)),
        "unknown_version": attempt(lambda: infer(client, model, fp64, model_version="9")),
        "unknown_metadata": attempt(lambda: client.get_model_metadata("no-such-model")),
        "bad_tensor": attempt(lambda: infer(client, model, [tensor("x", x0, "FP64"), fp64[1]])),
        "bad_datatype": attempt(lambda: infer(client, model, [fp64[0], tensor_int(u)])),
        "bad_shape": attempt(lambda: infer(client, model, [tensor("x0", x0.T, "FP64"), fp64[1]])),
        "bad_output": attempt(lambda: infer(client, model, fp64, outputs=[tc.InferRequestedOutput("variance")])),
    }
    client.close()
    json.dump(out, sys.stdout)
    return 0


def tensor_int(u: np.ndarray) -> tc.InferInput:
    t = tc.InferInput("u", list(u.shape), "INT32")
    t.set_data_from_numpy(u.astype(np.int32))
    return t


if __name__ == "__main__":
    sys.exit(main())
