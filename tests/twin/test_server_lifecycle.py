"""The twin server's life: health (no model yet: PredictionService NOT_SERVING), reflection, the management token,
Prometheus metrics per server, TLS, a SIGTERM drain of ``alutwin twin serve`` in a subprocess, and the allocator
setting its entry point applies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from plant import sample_initial_states
from twin.client import TwinClient
from twin.registry import ModelRegistry, ModelStore
from twin.serving import PREDICTION_SERVICE, REGISTRY_SERVICE

REPO = Path(__file__).resolve().parents[2]
TOKEN = "lifecycle-token-0123456789"
WAIT = 10.0
NOMINAL_U = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])


X0 = sample_initial_states(np.random.default_rng(0), 2)  # (2, 8)
U = np.broadcast_to(NOMINAL_U, (2, 4, 5)).copy()  # (2, 4, 5)


def test_no_model_yet_is_not_found_and_not_serving(twin_server, rpc_error):
    _, client = twin_server()
    assert client.health() == "SERVING" and client.health(REGISTRY_SERVICE) == "SERVING"
    assert client.health(PREDICTION_SERVICE) == "NOT_SERVING"
    code, details = rpc_error(lambda: client.predict("cell", X0, U))
    assert code == grpc.StatusCode.NOT_FOUND and "no model named 'cell'" in details


def test_health_and_reflection(serving):
    server, client = serving
    for name in ("", PREDICTION_SERVICE, REGISTRY_SERVICE):
        assert client.health(name) == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
    replies = stub.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=PREDICTION_SERVICE),
            ]
        ),
        timeout=WAIT,
    )
    listing, files = list(replies)
    names = {s.name for s in listing.list_services_response.service}
    assert {PREDICTION_SERVICE, REGISTRY_SERVICE, "grpc.health.v1.Health"} <= names
    assert files.file_descriptor_response.file_descriptor_proto  # the descriptor of twin.proto


def test_management_needs_the_token(twin_server, twin_models, model_files, rpc_error):
    server, client = twin_server()
    files = model_files(twin_models["v1"][0])
    for token, words in ((None, "authorization: Bearer"), ("wrong-token-0123456789", "not valid")):
        with TwinClient(server.address, token=token) as other:
            for call in (
                lambda c=other: c.register("cell", files),
                lambda c=other: c.set_alias("cell", "champion", 1),
                lambda c=other: c.rollback("cell"),
            ):
                code, details = rpc_error(call)
                assert code == grpc.StatusCode.UNAUTHENTICATED and words in details
            assert other.list_models()[0] == []  # reading needs no token
    assert client.register("cell", files)[0].version == 1


def test_management_is_off_without_a_configured_token(twin_server, twin_models, rpc_error):
    _, client = twin_server(token=None)
    code, details = rpc_error(lambda: client.register("cell", twin_models["v1"][0]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no token configured" in details


def test_token_from_an_environment_variable(twin_server, twin_models, monkeypatch):
    monkeypatch.setenv("TWIN_TEST_TOKEN", "from-env-0123456789abcdef")
    server, _ = twin_server(token=None, token_env="TWIN_TEST_TOKEN")
    with TwinClient(server.address, token="from-env-0123456789abcdef") as client:
        assert client.register("cell", twin_models["v1"][0])[0].version == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


PREDICT = {"grpc_service": "alutwin.v1.PredictionService", "grpc_method": "Predict"}


def test_a_twin_that_cannot_bind_releases_its_store(tmp_path, twin_server):
    busy, _ = twin_server(metrics_port=_free_port())
    store = tmp_path / "again"
    for taken, words in (({"port": busy.port}, "cannot listen on"), ({"metrics_port": busy.metrics_port}, "in use")):
        with pytest.raises(OSError, match=words):  # the gRPC bind, or the metrics endpoint (the last step)
            twin_server(store=store, **taken)
    _, client = twin_server(store=store)  # the store's lock was released (and the historian and the pool closed)
    assert client.health() == "SERVING" and client.list_models()[0] == []


def test_prometheus_metrics(twin_server, twin_models, rpc_error, scrape_metrics):
    server, client = twin_server(metrics_port=_free_port())
    client.register("cell", twin_models["v1"][0], set_alias="champion")
    client.predict("cell", X0, U)
    rpc_error(lambda: client.predict("cell", X0[:, :5], U))
    got = scrape_metrics(server.metrics_port)
    assert got[_key("grpc_server_handled_total", **PREDICT, grpc_code="OK")] == 1
    assert got[_key("grpc_server_handled_total", **PREDICT, grpc_code="INVALID_ARGUMENT")] == 1
    assert got[_key("grpc_server_handling_seconds_bucket", **PREDICT, le="+Inf")] == 2
    assert got[_key("grpc_server_handling_seconds_count", **PREDICT)] == 2
    assert 0 < got[_key("grpc_server_handling_seconds_sum", **PREDICT)] < WAIT
    register = {"grpc_service": "alutwin.v1.ModelRegistry", "grpc_method": "RegisterModel", "grpc_code": "OK"}
    assert got[_key("grpc_server_handled_total", **register)] == 1
    assert got[_key("alutwin_twin_active_model_version", model="cell", alias="champion")] == 1
    assert got[_key("alutwin_twin_predictions_in_flight")] == 0 and got[_key("alutwin_twin_registry_revision")] == 2
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=WAIT)


def test_each_server_counts_its_own_calls(twin_server, twin_models, scrape_metrics):
    """Two twins in one process: each has its own metrics (not the process-global registry)."""
    busy, client = twin_server(metrics_port=_free_port())
    idle, _ = twin_server(metrics_port=_free_port())
    client.register("cell", twin_models["v1"][0], set_alias="champion")
    for _ in range(3):
        client.predict("cell", X0, U)
    assert scrape_metrics(busy.metrics_port)[_key("grpc_server_handled_total", **PREDICT, grpc_code="OK")] == 3
    quiet = scrape_metrics(idle.metrics_port)
    assert not any(name == "grpc_server_handled_total" for name, _ in quiet)
    assert quiet[_key("alutwin_twin_registry_revision")] == 0
    busy.stop(0)  # the endpoint goes with its server
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{busy.metrics_port}/metrics", timeout=WAIT)


def test_tls(twin_server, twin_models, tls_files, rpc_error):
    cert, key = tls_files
    server, _ = twin_server(token=TOKEN, tls_cert=cert, tls_key=key)
    with TwinClient(f"localhost:{server.port}", token=TOKEN, root_certificates=cert.read_bytes()) as client:
        client.register("cell", twin_models["v1"][0], set_alias="champion")
        assert client.predict("cell", X0, U).model.version == 1
    with TwinClient(server.address, timeout=2.0) as plain:
        assert rpc_error(lambda: plain.list_models())[0] == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_in_flight_calls(tmp_path, twin_models, scenarios, model_files, rpc_error):
    store = tmp_path / "store"
    registry = ModelRegistry(ModelStore(store))
    registry.register("cell", *model_files(twin_models["v1"][0]), set_alias="champion")
    registry.close()
    metrics_port = _free_port()
    config = tmp_path / "twin.yaml"
    config.write_text(
        f"store: store\nport: 0\ngrace_s: 20\nengine: numpy\nmetrics_port: {metrics_port}\nmax_horizon: 100000\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from alutwin.cli import main; main()", "twin", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        services = "alutwin.v1.PredictionService, alutwin.v1.ModelRegistry, inference.GRPCInferenceService"
        assert f"serving {services}, alutwin.v1.IngestService on 127.0.0.1:" in line, line + proc.stderr.read()
        address = line.split(" on ")[1].split()[0]
        x0, u = scenarios(b=4, h=20_000)  # one to two seconds of rollout with the numpy engine
        result: list = []
        with TwinClient(address, timeout=60) as client:
            assert client.health(PREDICTION_SERVICE) == "SERVING"
            t = threading.Thread(target=lambda: result.append(client.predict("cell", x0, u)))
            t.start()
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            deadline = time.monotonic() + WAIT
            while "alutwin_twin_predictions_in_flight 1" not in urllib.request.urlopen(url).read().decode():
                assert time.monotonic() < deadline, "the prediction never started"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT
            while client.health(PREDICTION_SERVICE) != "NOT_SERVING":  # health checks are still answered ...
                assert time.monotonic() < deadline, "still serving after SIGTERM"
                time.sleep(0.02)
            code, details = rpc_error(lambda: client.predict("cell", x0[:1], u[:1, :5]))  # ... new calls refused ...
            assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details
            assert t.is_alive()
            t.join(60)  # ... and the one in flight finishes
            assert result and result[0].model.version == 1 and result[0].mean.shape == (4, 20_001, 8)
            assert np.isfinite(result[0].mean).all()
        assert proc.wait(timeout=WAIT) == 0
        out = proc.stdout.read()
        assert "draining" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_HEAP_PROBE = """
import ctypes, platform, sys
from twin.cli import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
if platform.libc_ver()[0] != "glibc":
    print(applied, -1)
    raise SystemExit
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
block = bytes(8 << 20)  # the size of a potline Predict's arrays
del block
print(applied, mallinfo2().fordblks)
"""


@pytest.mark.parametrize("mib", [0, 64])
def test_keep_freed_memory_keeps_a_large_freed_block_for_reuse(mib):
    """With heap_keep_mib the twin's process keeps a freed 8 MiB block in its heap (glibc: free bytes of the
    heap); by default glibc maps such a block fresh and unmaps it when freed."""
    run = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE, str(mib)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert run.returncode == 0, run.stderr
    applied, free_bytes = run.stdout.split()
    if free_bytes == "-1":  # not glibc: nothing to tune, and nothing claimed
        assert applied == "False"
        return
    assert applied == str(mib > 0)
    if mib:
        assert int(free_bytes) >= 8 << 20
    else:
        assert int(free_bytes) < 8 << 20
