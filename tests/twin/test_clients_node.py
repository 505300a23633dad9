"""The examples for clients in other languages (docs/clients.md), against a twin on 127.0.0.1 serving the
committed sparse model: the Node client ``examples/node/predict.js`` (run with ``node``, its packages from
``npm ci``) receives bit for bit what the Python client receives for the same requests, and the grpcurl request
files ``examples/grpcurl/*.json`` are proto JSON of ``alutwin.v1.PredictRequest`` that the twin answers (sent
here through the Python stub: grpcurl is not a dependency)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from alutwin.codec import decode_array
from alutwin.v1 import twin_pb2, twin_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
GRPCURL_DIR = ROOT / "examples" / "grpcurl"
DOC = ROOT / "docs" / "clients.md"
PRETRAINED = ROOT / "identification" / "pretrained" / "sparse-inputskip"
NODE_MAJOR = 18  # package.json "engines"
NODE_TIMEOUT_S = 60
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` command, with the example's packages in examples/node/node_modules (``npm ci`` from the
    lock file when they are missing: that needs the npm registry)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"the Node example's test needs Node >= {NODE_MAJOR} with npm on PATH (found node={node}, npm={npm}); "
            "install them, e.g. `apt-get install nodejs npm` (Debian/Ubuntu)"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < NODE_MAJOR:
        pytest.fail(f"the Node example needs Node >= {NODE_MAJOR}, found {version.strip()!r} at {node}")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
        if done.returncode != 0:
            pytest.fail(f"`npm ci` in examples/node failed (it needs the npm registry):\n{done.stderr[-3000:]}")
    return node


@pytest.fixture
def twin(twin_server: Any) -> tuple[Any, Any]:
    """A twin serving the committed sparse model as ``cell``'s champion (version 1), and its client."""
    server, client = twin_server()
    client.register("cell", PRETRAINED, set_alias="champion")
    return server, client


def _run_node(node: str, address: str, request: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(NODE_DIR / "predict.js"), address, str(request)],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )


def _array(js: dict[str, Any] | None) -> np.ndarray | None:
    """A predict.js array: its shape and base64 little-endian float64 values."""
    if js is None:
        return None
    assert js["dtype"] == "<f8"
    return np.frombuffer(base64.b64decode(js["b64"]), dtype="<f8").reshape(js["shape"])


def _stacked(pred: Any, names: list[str]) -> np.ndarray:
    """The Python client's outputs as the response's array (B, S, len(names))."""
    return np.stack([pred.outputs[n] for n in names], axis=-1)


def _f32(a: np.ndarray) -> np.ndarray:
    """Rounded to float32 and widened back (what raw_f32 carries)."""
    return a.astype(np.float32).astype(np.float64)


def test_the_node_client_receives_bit_for_bit_what_the_python_client_receives(node: str, twin: tuple[Any, Any]) -> None:
    server, client = twin
    request = NODE_DIR / "request.json"  # the request docs/clients.md runs
    job = json.loads(request.read_text())
    x0, u = np.array(job["x0"], dtype=np.float64), np.array(job["u"], dtype=np.float64)  # (2, 8), (2, 12, 5)
    names, stride = job["outputs"], job["stride"]
    done = _run_node(node, server.address, request)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)

    assert got["health"] == {"": "SERVING", "alutwin.v1.PredictionService": "SERVING"}
    info = client.serving_info()
    assert got["serving_info"] == {
        "max_batch": info.max_batch,
        "max_horizon": info.max_horizon,
        "max_work": info.max_work,
        "max_message_bytes": info.max_message_bytes,
        "response_overhead_bytes": info.response_overhead_bytes,
        "default_alias": info.default_alias,
        "states": [name for name, _ in info.states],
        "inputs": [name for name, _ in info.inputs],
        "default_outputs": list(info.default_outputs),
        "served_versions": [
            {"name": v.name, "version": v.version, "n_members": v.n_members} for v in info.served_versions
        ],
    }
    models, _ = client.list_models()
    assert got["models"] == [{"name": m.name, "versions": sorted(m.versions), "aliases": m.aliases} for m in models]

    # The full Predict: float64 both ways (raw), the champion. The same server code answers both clients, so the
    # arrays are the same bits.
    full = client.predict("cell", x0, u, outputs=names)
    js = got["predict"]
    assert js["model"] == {"name": "cell", "version": full.model.version, "alias": "champion"}
    assert (js["n_members"], js["dt_s"], js["stride"], js["output_names"]) == (full.n_members, full.dt, 1, names)
    assert np.array_equal(_array(js["mean"]), full.mean) and _array(js["mean"]).shape == (2, 13, 8)
    assert np.array_equal(_array(js["spread"]), full.spread)
    assert np.array_equal(_array(js["outputs"]), _stacked(full, names))
    assert js["last_state"] == full.require_mean()[0, -1].tolist()  # the decimals node prints are exact
    assert js["envelope_known"] == full.envelope_known
    assert js["validity"] == [
        {
            "domain_exit_step": v.domain_exit_step,
            "envelope_exit_step": v.envelope_exit_step,
            "diverged_members": list(v.diverged_members),
        }
        for v in full.validity
    ]

    # The lean Predict: the version pinned, field mask mean + outputs, stride 6, float32 arrays both ways.
    lean = client.predict(
        "cell",
        x0,
        u,
        version=full.model.version,
        outputs=names,
        precision="float32",
        fields=("mean", "outputs"),
        stride=stride,
    )
    js = got["lean"]
    assert js["model"] == {"name": "cell", "version": full.model.version, "alias": ""}
    assert js["stride"] == stride and js["spread"] is None and js["output_names"] == names
    mean, outputs = _array(js["mean"]), _array(js["outputs"])
    assert mean.shape == (2, 3, 8) and outputs.shape == (2, 3, 2)  # steps 0, 6, 12
    assert np.array_equal(mean, lean.mean) and np.array_equal(outputs, _stacked(lean, names))
    # What the lean response is: the float64 rollout from the inputs rounded to float32 (0.024 and 0.05 are not
    # float32 numbers), every 6th step, rounded to float32, exactly.
    ref = client.predict("cell", _f32(x0), _f32(u), outputs=names)
    assert np.array_equal(mean, _f32(ref.require_mean()[:, ::stride]))
    assert np.array_equal(outputs, _f32(_stacked(ref, names)[:, ::stride]))
    # ... and so within float32 rounding of the full response's slices (the inputs' rounding, carried over 12
    # steps, is far smaller here than the last digits float32 keeps).
    np.testing.assert_allclose(mean, full.require_mean()[:, ::stride], rtol=2e-7, atol=0)


def test_a_bad_request_makes_the_node_client_exit_1_with_invalid_argument(
    node: str, twin: tuple[Any, Any], tmp_path: Path
) -> None:
    server, _ = twin
    job = json.loads((NODE_DIR / "request.json").read_text())
    job["x0"] = [row[:7] for row in job["x0"]]  # (2, 7): one state short
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(job))
    done = _run_node(node, server.address, bad)
    assert done.returncode == 1, (done.stdout, done.stderr)
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["details"].startswith("x0 "), error
    assert "(B, 8)" in error["details"] and done.stdout == ""


def _grpcurl_request(name: str) -> twin_pb2.PredictRequest:
    """``examples/grpcurl/<name>`` as a PredictRequest, read by protobuf's own JSON parser. grpcurl reads a
    FieldMask as an object ``{"paths": [...]}`` (its old JSON library), protobuf's JSON mapping as the string
    ``"mean,outputs"``: the lean file has grpcurl's form, turned into the canonical one here."""
    data = json.loads((GRPCURL_DIR / name).read_text())
    if "field_mask" in data:
        data["field_mask"] = ",".join(data["field_mask"]["paths"])
    return json_format.ParseDict(data, twin_pb2.PredictRequest())


def test_the_grpcurl_requests_are_proto_json_the_twin_answers(twin: tuple[Any, Any]) -> None:
    server, client = twin
    doc = DOC.read_text()
    for name in ("predict.json", "predict_lean.json"):
        assert (GRPCURL_DIR / name).read_text() in doc, f"docs/clients.md should quote examples/grpcurl/{name}"
    full_req, lean_req = _grpcurl_request("predict.json"), _grpcurl_request("predict_lean.json")
    assert full_req.encoding == twin_pb2.ARRAY_ENCODING_UNSPECIFIED  # packed: readable numbers in grpcurl's JSON
    assert list(lean_req.field_mask.paths) == ["mean", "outputs"] and lean_req.stride == 3
    x0, u = decode_array(full_req.x0, "x0", 2), decode_array(full_req.u, "u", 3)
    assert x0.shape == (1, 8) and u.shape == (1, 6, 5)
    assert np.array_equal(decode_array(lean_req.x0, "x0", 2), x0)
    assert np.array_equal(decode_array(lean_req.u, "u", 3), u)

    with grpc.insecure_channel(server.address) as channel:
        stub = twin_pb2_grpc.PredictionServiceStub(channel)
        full = stub.Predict(full_req, timeout=30)
        lean = stub.Predict(lean_req, timeout=30)
        # the services grpcurl `list` shows (docs/clients.md), by reflection
        listed = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
        bad_req = twin_pb2.PredictRequest()
        bad_req.CopyFrom(full_req)
        bad_req.x0.shape[:] = [1, 7]
        del bad_req.x0.values[0]
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(bad_req, timeout=30)

    py = client.predict("cell", x0, u, outputs=list(full_req.outputs))
    names = list(full_req.outputs)
    assert (full.model.name, full.model.version, full.model.alias) == ("cell", 1, "champion")
    assert list(full.output_names) == names and full.stride in (0, 1)
    assert np.array_equal(decode_array(full.mean, "mean"), py.mean)  # packed doubles: the same bits as raw
    assert np.array_equal(decode_array(full.spread, "spread"), py.spread)
    assert np.array_equal(decode_array(full.outputs, "outputs"), _stacked(py, names))
    assert [v.domain_exit_step for v in full.validity] == [-1] and full.envelope_known

    assert (lean.model.version, lean.model.alias, lean.stride) == (1, "", 3)
    assert not lean.HasField("spread") and list(lean.output_names) == ["superheat"]
    assert np.array_equal(decode_array(lean.mean, "mean"), py.require_mean()[:, ::3])  # steps 0, 3, 6
    assert np.array_equal(decode_array(lean.outputs, "outputs")[..., 0], py.outputs["superheat"][:, ::3])

    for service in listed:
        assert f"\n{service}\n" in doc, f"docs/clients.md's `grpcurl list` should show {service}"
    assert {
        "alutwin.v1.PredictionService",
        "alutwin.v1.ModelRegistry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
    } <= set(listed)

    # INVALID_ARGUMENT carries a google.rpc.BadRequest in grpc-status-details-bin, as the doc shows grpcurl print
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("x0 ")
    status = rpc_status.from_call(err)
    assert status is not None and status.message == err.details() and len(status.details) == 1
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert [(v.field, v.description) for v in detail.field_violations] == [("x0", err.details())]
