"""The twin's KServe v2 / Open Inference Protocol endpoint (:mod:`twin.serving.kserve`).

The real ``tritonclient.grpc`` (in a subprocess, ``kserve_triton_client.py``: its ``inference`` protos clash with
ours in one process) checks liveness, readiness, metadata, inference and errors against a twin on 127.0.0.1, and
its ModelInfer arrays must equal the same twin's Predict bit for bit (float64; float32 for FP32 inputs).
Our own stub covers typed contents, the alias parameter, each refused request, drain and readiness, health and
reflection; the proto's messages must be tritonclient's field for field.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

import alutwin
from alutwin.kserve import grpc_predict_v2_pb2 as pb
from alutwin.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from alutwin.reflection.v1 import reflection_pb2, reflection_pb2_grpc
from twin.serving import DEFAULT_OUTPUTS
from twin.serving.kserve import INPUT_SHAPES, KSERVE_SERVICE, OUTPUT_SHAPES

SCRIPT = Path(__file__).with_name("kserve_triton_client.py")
WAIT = 10.0
B, H = 3, 7


@pytest.fixture(scope="module")
def twin(tmp_path_factory, start_twin, twin_models):
    """A twin whose model "cell" has version 1 as champion and version 2 as "canary"."""
    with start_twin(tmp_path_factory.mktemp("kserve-store")) as (server, client):
        client.register("cell", twin_models["v1"][0], set_alias="champion")
        client.register("cell", twin_models["v2"][0], set_alias="canary")
        yield server, client


@pytest.fixture(scope="module")
def inputs(scenarios) -> tuple[np.ndarray, np.ndarray]:
    return scenarios(B, H, 11)


@pytest.fixture(scope="module")
def triton(twin, inputs) -> dict[str, Any]:
    """What tritonclient got from the twin (one run of the script)."""
    server, _ = twin
    x0, u = inputs

    def spec(a: np.ndarray) -> dict[str, Any]:
        return {"shape": list(a.shape), "b64": base64.b64encode(a.astype("<f8").tobytes()).decode()}

    job = {"address": server.address, "model": "cell", "x0": spec(x0), "u": spec(u)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], input=json.dumps(job), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture
def stub(twin) -> pb_grpc.GRPCInferenceServiceStub:
    with grpc.insecure_channel(twin[0].address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _array(spec: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(spec["b64"]), np.dtype(spec["dtype"])).reshape(spec["shape"])


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _columns(prediction, names) -> np.ndarray:
    return np.stack([prediction.outputs[n] for n in names], axis=-1)  # (B, S, n_outputs)


# -- the contract ---------------------------------------------------------------------------------------------


def _our_layout() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fd)
    messages: dict[str, list[list[Any]]] = {}

    def add(m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        messages[prefix + m.name] = [[f.name, f.number, f.type, f.label, f.type_name] for f in m.field]
        for nested in m.nested_type:
            add(nested, prefix + m.name + ".")

    for m in fd.message_type:
        add(m, "")
    (service,) = fd.service
    return {
        "package": fd.package,
        "service": service.name,
        "messages": messages,
        "methods": {m.name: [m.input_type, m.output_type] for m in service.method},
    }


def test_the_proto_is_tritonclients_field_for_field(triton):
    ours, theirs = _our_layout(), triton["layout"]
    assert ours["package"] == theirs["package"] == "inference" and KSERVE_SERVICE == "inference.GRPCInferenceService"
    assert ours["methods"] == theirs["methods"] and len(ours["methods"]) == 6
    assert ours["messages"] == theirs["messages"]
    assert "ModelInferRequest.InferInputTensor" in ours["messages"]


# -- tritonclient -------------------------------------------------------------------------------------------------


def test_tritonclient_server_and_model_status(triton):
    assert triton["live"] is True and triton["ready"] is True
    assert triton["server_metadata"]["name"] == "alutwin-twin"
    assert triton["server_metadata"]["version"] == alutwin.__version__
    assert triton["server_metadata"].get("extensions", []) == []
    assert triton["model_ready"] is True and triton["model_ready_v2"] is True
    assert triton["model_ready_v9"] is False and triton["unknown_ready"] is False


def test_tritonclient_model_metadata(triton):
    meta = triton["metadata"]
    assert meta["name"] == "cell" and meta["platform"] == "alutwin" and meta["versions"] == ["1", "2"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("x0", "FP64", [-1, 8]),
        ("u", "FP64", [-1, -1, 5]),
    ]
    assert [t["name"] for t in meta["outputs"]] == list(OUTPUT_SHAPES) == ["mean", "spread", "outputs", "members"]
    assert [[int(d) for d in t["shape"]] for t in meta["outputs"]] == [list(s) for s in OUTPUT_SHAPES.values()]
    assert triton["metadata_v2"]["versions"] == ["1", "2"]
    assert triton["unknown_metadata"]["status"] == "StatusCode.NOT_FOUND"
    assert "no model named 'no-such-model'" in triton["unknown_metadata"]["message"]


def test_tritonclient_infer_equals_predict_bit_for_bit(triton, twin, inputs):
    _, client = twin
    x0, u = inputs
    got = triton["default"]
    assert list(got["outputs"]) == ["mean", "spread", "outputs"] and got["id"] == "req-1"
    assert got["model_version"] == "1"
    params = got["parameters"]
    assert params["served_version"] == 1 and params["served_alias"] == "champion" and params["stride"] == 1
    assert params["output_names"] == ",".join(DEFAULT_OUTPUTS)
    expected = client.predict("cell", x0, u)
    assert params["n_members"] == expected.n_members == 3 and params["dt_s"] == expected.dt
    _same_bits(_array(got["outputs"]["mean"]), expected.mean)
    _same_bits(_array(got["outputs"]["spread"]), expected.spread)
    _same_bits(_array(got["outputs"]["outputs"]), _columns(expected, DEFAULT_OUTPUTS))
    assert _array(got["outputs"]["mean"]).shape == (B, H + 1, 8)


def test_tritonclient_pinned_version_outputs_and_stride(triton, twin, inputs):
    _, client = twin
    x0, u = inputs
    got = triton["pinned"]
    assert list(got["outputs"]) == ["members", "outputs"]  # in the order requested
    params = got["parameters"]
    assert got["model_version"] == "2" and params["served_version"] == 2 and params["served_alias"] == ""
    assert params["stride"] == 3 and params["output_names"] == "cell_voltage,superheat"
    names = ("cell_voltage", "superheat")
    expected = client.predict("cell", x0, u, version=2, outputs=names, fields=["members", "outputs"], stride=3)
    _same_bits(_array(got["outputs"]["members"]), expected.members)
    _same_bits(_array(got["outputs"]["outputs"]), _columns(expected, names))
    assert expected.members.shape == (3, B, 3, 8)  # steps 0, 3, 6 of H + 1 = 8
    assert not np.array_equal(expected.members, client.predict("cell", x0, u, fields=["members"], stride=3).members)


def test_tritonclient_fp32_inputs_give_fp32_outputs_as_predict_in_float32(triton, twin, inputs):
    _, client = twin
    x0, u = inputs
    got = triton["fp32"]
    expected = client.predict("cell", x0, u, precision="float32")
    for name in ("mean", "spread"):
        _same_bits(_array(got["outputs"][name]), getattr(expected, name).astype(np.float32))
    _same_bits(_array(got["outputs"]["outputs"]), _columns(expected, DEFAULT_OUTPUTS).astype(np.float32))


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("unknown_model", "NOT_FOUND", "no model named 'no-such-model'"),
        ("unknown_version", "NOT_FOUND", "9"),
        ("bad_tensor", "INVALID_ARGUMENT", "inputs[0].name 'x' is not one of ['x0', 'u']"),
        ("bad_datatype", "INVALID_ARGUMENT", "inputs[1] ('u').datatype is 'INT32'"),
        ("bad_shape", "INVALID_ARGUMENT", "x0 must have shape (B, 8), got [8, 3]"),
        ("bad_output", "INVALID_ARGUMENT", "outputs[0].name 'variance' is not one of"),
    ],
)
def test_tritonclient_errors(triton, case, status, words):
    error = triton[case]
    assert error["status"] == f"StatusCode.{status}"
    assert words in error["message"] and "Traceback" not in error["message"] and "/" not in error["message"]


# -- our stub: typed contents, parameters, refusals -----------------------------------------------------------------


def _request(x0: np.ndarray, u: np.ndarray, *, raw: bool = False, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cell", **fields)
    for name, a in (("x0", x0), ("u", u)):
        tensor = request.inputs.add(name=name, datatype="FP64", shape=a.shape)
        if raw:
            request.raw_input_contents.append(np.ascontiguousarray(a, "<f8").tobytes())
        else:
            tensor.contents.fp64_contents.extend(a.ravel().tolist())
    return request


def test_typed_contents_and_the_alias_parameter(stub, twin, inputs):
    _, client = twin
    x0, u = inputs
    request = _request(x0, u)
    request.parameters["alias"].string_param = "canary"
    request.outputs.add(name="mean")
    response = stub.ModelInfer(request, timeout=WAIT)
    assert not response.raw_output_contents and [o.name for o in response.outputs] == ["mean"]
    (out,) = response.outputs
    assert out.datatype == "FP64" and list(out.shape) == [B, H + 1, 8]
    mean = np.array(out.contents.fp64_contents).reshape(out.shape)
    _same_bits(mean, client.predict("cell", x0, u, alias="canary").mean)
    assert response.parameters["served_version"].int64_param == 2
    assert response.parameters["served_alias"].string_param == "canary"


def _with(change):
    def build(x0: np.ndarray, u: np.ndarray) -> pb.ModelInferRequest:
        request = _request(x0, u, raw=True)
        change(request)
        return request

    return build


def _set_param(key: str, **value: Any):
    return lambda r: r.parameters[key].CopyFrom(pb.InferParameter(**value))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r.raw_input_contents.pop(), "raw_input_contents holds 1 tensors for 2 inputs"),
        (lambda r: r.inputs[0].contents.fp64_contents.append(1.0), "has contents although"),
        (lambda r: r.raw_input_contents.__setitem__(1, b"\0" * 8), "raw_input_contents holds 8 bytes"),
        (lambda r: r.inputs[1].shape.__setitem__(0, -3), "negative length"),
        (lambda r: r.inputs.pop() and r.raw_input_contents.pop(), "['u'] missing"),
        (lambda r: r.inputs[1].__setattr__("name", "x0"), "the input 'x0' is given twice"),
        (_set_param("temperature", double_param=1.0), "parameters['temperature'] is not one of"),
        (_set_param("stride", string_param="2"), "parameters['stride'] must be given as int64_param"),
        (_set_param("stride", int64_param=-1), "it must be >= 1"),
        (_set_param("outputs", string_param="superheat,colour"), "unknown output 'colour'"),
        (lambda r: r.__setattr__("model_version", "v1"), "version 'v1' is not a version number"),
        (lambda r: r.__setattr__("model_name", ""), "model_name is empty"),
        (lambda r: r.outputs.add(name="mean") and r.outputs.add(name="mean"), "'mean' is requested twice"),
    ],
)
def test_refused_requests_name_the_field(stub, rpc_error, inputs, change, words):
    code, details = rpc_error(lambda: stub.ModelInfer(_with(change)(*inputs), timeout=WAIT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details


def test_the_limits_of_predict_apply(stub, rpc_error, twin, scenarios):
    x0, u = scenarios(twin[0].runtime.config.max_batch + 1, 2, 0)
    code, details = rpc_error(lambda: stub.ModelInfer(_request(x0, u, raw=True), timeout=WAIT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "scenarios; this server takes 1 to" in details
    version_and_alias = _with(lambda r: (r.__setattr__("model_version", "1"), _set_param("alias", string_param="x")(r)))
    code, details = rpc_error(lambda: stub.ModelInfer(version_and_alias(*scenarios(1, 2, 0)), timeout=WAIT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not both" in details


def test_model_ready_and_metadata_refusals(stub, rpc_error):
    assert stub.ModelReady(pb.ModelReadyRequest(name="cell", version="1"), timeout=WAIT).ready
    code, details = rpc_error(lambda: stub.ModelReady(pb.ModelReadyRequest(name="cell", version="-1"), timeout=WAIT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'-1' is not a version number" in details
    code, details = rpc_error(
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="cell", version="7"), timeout=WAIT)
    )
    assert code == grpc.StatusCode.NOT_FOUND and "has no version 7; its versions are [1, 2]" in details
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="cell"), timeout=WAIT)
    assert [(t.name, tuple(t.shape)) for t in meta.inputs] == list(INPUT_SHAPES.items())


def test_health_and_reflection_name_the_service(twin):
    server, client = twin
    assert client.health(KSERVE_SERVICE) == "SERVING"
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        asked = [reflection_pb2.ServerReflectionRequest(list_services="")]
        (listing,) = stub.ServerReflectionInfo(iter(asked), timeout=WAIT)
    assert KSERVE_SERVICE in {s.name for s in listing.list_services_response.service}


def test_not_ready_without_a_model_and_while_draining(twin_server, twin_models, rpc_error, scenarios):
    server, client = twin_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=WAIT).ready  # no model yet
        assert client.health(KSERVE_SERVICE) == "NOT_SERVING"
        client.register("cell", twin_models["v1"][0], set_alias="champion")
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=WAIT).ready
        server.begin_shutdown()  # health NOT_SERVING: ServerReady follows it
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=WAIT).ready
        server._gate.close(0.0)  # what stop() does next: the model calls are turned away, liveness answers
        code, details = rpc_error(lambda: stub.ModelInfer(_request(*scenarios(1, 2, 0), raw=True), timeout=WAIT))
        assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=WAIT).live
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=WAIT).name == "alutwin-twin"
