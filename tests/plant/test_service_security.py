"""The plant service at parity with the twin: the token of the commands (read-only calls stay open), TLS, the
security settings of PlantConfig, Prometheus metrics per server, and the drain when it stops (in process and on
SIGTERM in a subprocess)."""

from __future__ import annotations

import logging
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
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.config import ConfigError
from alutwin.metrics import RpcMetrics
from plant.client import PlantClient
from plant.config import PlantConfig
from plant.service import COMMAND_METHODS, SERVICE_NAME, create_server

REPO = Path(__file__).resolve().parents[2]
TOKEN = "plant-token-0123456789abcdef"
WAIT = 10.0


def _key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def _handled(method: str, code: str) -> tuple[str, frozenset]:
    return _key("grpc_server_handled_total", grpc_service=SERVICE_NAME, grpc_method=method, grpc_code=code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# Settings


def test_the_security_settings_are_checked_together():
    base = {"n_cells": 2, "seed": 0, "port": 0}
    config = PlantConfig(**base)
    assert (config.token, config.tls, config.metrics_port, config.metrics_host) == (None, False, None, "127.0.0.1")
    with pytest.raises(ConfigError) as err:
        PlantConfig(**base, token=TOKEN, token_env="PLANT_TOKEN", tls_cert=Path("cert.pem"))
    assert "give token or token_env, not both" in str(err.value)
    assert "tls_cert and tls_key go together" in str(err.value)  # every problem at once
    for bad, words in (
        ({"token": "short"}, "token: must be a string of at least 16 characters"),
        ({"token_env": "1X"}, "token_env: must be an environment variable name"),
        ({"metrics_port": 70000}, "metrics_port: must be <= 65535, got 70000"),
    ):
        with pytest.raises(ConfigError, match=words):
            PlantConfig(**base, **bad)
    assert not PlantConfig(**base, host="0.0.0.0").loopback and PlantConfig(**base, host="[::1]").loopback


def test_relative_tls_paths_in_a_file_are_relative_to_it(tmp_path):
    (tmp_path / "plant.yaml").write_text("n_cells: 1\nseed: 0\nport: 0\ntls_cert: a.crt\ntls_key: keys/a.key\n")
    config = PlantConfig.from_yaml(tmp_path / "plant.yaml")
    assert config.tls and (config.tls_cert, config.tls_key) == (tmp_path / "a.crt", tmp_path / "keys" / "a.key")


def test_the_token_from_an_environment_variable(monkeypatch):
    config = PlantConfig(n_cells=1, seed=0, port=0, token_env="ALUTWIN_PLANT_TEST_TOKEN")
    monkeypatch.delenv("ALUTWIN_PLANT_TEST_TOKEN", raising=False)
    assert config.resolve_token() is None
    monkeypatch.setenv("ALUTWIN_PLANT_TEST_TOKEN", "too-short")
    with pytest.raises(ValueError, match="ALUTWIN_PLANT_TEST_TOKEN must be at least 16 characters"):
        config.resolve_token()
    monkeypatch.setenv("ALUTWIN_PLANT_TEST_TOKEN", TOKEN)
    assert config.resolve_token() == TOKEN


# ---------------------------------------------------------------------------------------------------------------
# The token of the commands


def test_the_commands_are_the_rpcs_that_change_the_plant():
    assert COMMAND_METHODS == {f"/{SERVICE_NAME}/SetInputs", f"/{SERVICE_NAME}/Step"}


def test_commands_need_the_token_and_reading_does_not(plant_server, rpc_error):
    server, anonymous = plant_server(token=TOKEN)
    for call in (lambda: anonymous.step(1), lambda: anonymous.set_inputs(0, acd=0.045)):
        code, details = rpc_error(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer <token>" in details
    with PlantClient(server.address, token="wrong-token-0123456789", timeout=WAIT) as wrong:
        for call in (lambda: wrong.step(1), lambda: wrong.set_inputs(0, acd=0.045)):
            assert rpc_error(call) == (grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid")
    assert server.potline.step_index == 0 and anonymous.state(0).manual["acd"] is None  # nothing was applied
    # reading needs no token: info, state, the measurement stream, health
    assert anonymous.info().n_cells == 3 and anonymous.state(2).cell == 2 and anonymous.health() == "SERVING"
    with anonymous.measurements([1]) as stream:
        assert next(stream).cell == 1
    with PlantClient(server.address, token=TOKEN, timeout=WAIT) as operator:
        assert operator.set_inputs(0, acd=0.045) == 0
        assert operator.step(4) == 4
    assert anonymous.state(0).manual["acd"] == 0.045 and anonymous.state(0).step == 4


def test_without_a_token_the_commands_are_open(plant_server):
    _, client = plant_server()
    client.set_inputs(1, alumina_feed=0.03)
    assert client.step(2) == 2 and client.state(1).manual["alumina_feed"] == 0.03


def test_a_token_from_the_environment_guards_the_commands(plant_server, rpc_error, monkeypatch):
    monkeypatch.setenv("ALUTWIN_PLANT_TEST_TOKEN", TOKEN)
    server, anonymous = plant_server(token_env="ALUTWIN_PLANT_TEST_TOKEN")
    assert rpc_error(lambda: anonymous.step(1))[0] == grpc.StatusCode.UNAUTHENTICATED
    with PlantClient(server.address, token=TOKEN, timeout=WAIT) as operator:
        assert operator.step(1) == 1


def test_listening_beyond_loopback_warns_of_what_is_open(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="plant.service")
    base = {"n_cells": 1, "seed": 0, "port": 0, "host": "0.0.0.0"}
    for settings, warned in (({}, ("without TLS", "commands open")), ({"token": TOKEN}, ("without TLS",))):
        caplog.clear()
        with create_server(PlantConfig(**base, **settings))[0]:  # started and stopped: its port is released
            pass
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == len(warned), messages
        assert all(any(w in m for m in messages) for w in warned), messages
    caplog.clear()
    with create_server(PlantConfig(n_cells=1, seed=0, port=0))[0]:  # loopback: nothing to warn of
        pass
    assert not caplog.records


# ---------------------------------------------------------------------------------------------------------------
# TLS


def test_tls(plant_server, tls_files, rpc_error):
    cert, key = tls_files
    server, _ = plant_server(token=TOKEN, tls_cert=cert, tls_key=key)
    address = f"localhost:{server.port}"  # the certificate names localhost
    with PlantClient(address, token=TOKEN, root_certificates=cert.read_bytes(), timeout=WAIT) as client:
        assert client.info().n_cells == 3 and client.health(SERVICE_NAME) == "SERVING"
        client.set_inputs(0, alf3_feed=1.5)
        assert client.step(3) == 3
        with client.measurements([0]) as stream:
            m = next(stream)
        assert (m.step, m.manual["alf3_feed"]) == (3, 1.5)
    with PlantClient(server.address, timeout=2.0) as plain:  # a plaintext client cannot talk to a TLS server
        assert rpc_error(plain.info)[0] == grpc.StatusCode.UNAVAILABLE


def test_unreadable_tls_files_are_a_clear_error(tmp_path):
    config = PlantConfig(n_cells=1, seed=0, port=0, tls_cert=tmp_path / "no.crt", tls_key=tmp_path / "no.key")
    with pytest.raises(OSError, match=r"cannot read the TLS key or certificate: .*no\."):
        create_server(config)


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def test_prometheus_metrics_move_with_the_plant(plant_server, rpc_error, scrape_metrics, until):
    server, client = plant_server(token=TOKEN, metrics_port=0, stream_queue_size=2)
    assert server.metrics_port and server.metrics_port != server.port  # 0 picked a free port
    first = scrape_metrics(server.metrics_port)
    assert first[_key("alutwin_plant_cells")] == 3 and first[_key("alutwin_plant_steps_total")] == 0
    assert first[_key("alutwin_plant_streams")] == 0 and first[_key("alutwin_plant_stream_dropped_total")] == 0
    assert not any(name == "grpc_server_handled_total" for name, _ in first)

    reader = server.runtime.subscribe(None, 1)  # a stream's queue (2) that nobody reads
    rpc_error(lambda: client.step(1))  # UNAUTHENTICATED: no token
    with PlantClient(server.address, token=TOKEN, timeout=WAIT) as operator:
        operator.step(10)
        rpc_error(lambda: operator.set_inputs(0, acd=1.0))  # INVALID_ARGUMENT: outside the ACD's bounds
    client.info()
    got = scrape_metrics(server.metrics_port)
    assert got[_handled("Step", "OK")] == 1 and got[_handled("Step", "UNAUTHENTICATED")] == 1
    assert got[_handled("SetInputs", "INVALID_ARGUMENT")] == 1 and got[_handled("GetInfo", "OK")] == 1
    latency = {"grpc_service": SERVICE_NAME, "grpc_method": "Step"}
    assert got[_key("grpc_server_handling_seconds_count", **latency)] == 2
    assert got[_key("grpc_server_handling_seconds_bucket", **latency, le="+Inf")] == 2
    assert 0 < got[_key("grpc_server_handling_seconds_sum", **latency)] < WAIT
    assert got[_key("alutwin_plant_steps_total")] == 10
    assert got[_key("alutwin_plant_time_seconds")] == pytest.approx(10 * server.potline.dt, rel=1e-12)
    assert got[_key("alutwin_plant_streams")] == 1
    # 3 initial snapshots and 10 steps of 3 cells went into the queue of 2
    assert got[_key("alutwin_plant_stream_dropped_total")] == 3 + 10 * 3 - 2 == reader.dropped
    server.runtime.unsubscribe(reader)
    with client.measurements([0]) as stream:  # a stream over gRPC counts as one too
        assert next(stream).step == 10
        assert scrape_metrics(server.metrics_port)[_key("alutwin_plant_streams")] == 1
    assert until(lambda: server.runtime.broadcaster.count == 0)
    after = scrape_metrics(server.metrics_port)
    assert after[_key("alutwin_plant_streams")] == 0
    assert after[_key("alutwin_plant_stream_dropped_total")] == 31  # an ended stream's drops stay counted

    def streams_handled() -> float:  # OK or CANCELLED: the client left while the stream waited, or while it sent
        samples = scrape_metrics(server.metrics_port).items()
        return sum(
            v
            for (n, labels), v in samples
            if n == "grpc_server_handled_total" and ("grpc_method", "StreamMeasurements") in labels
        )

    assert until(lambda: streams_handled() == 1)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=WAIT)


def test_a_metric_read_at_scrape_is_a_gauge_or_a_counter():
    with pytest.raises(ValueError, match="kind must be one of \\['counter', 'gauge'\\], got 'histogram'"):
        RpcMetrics().read_at_scrape("histogram", "x", "An x.", lambda: 1.0)


def test_each_plant_server_counts_its_own_calls(plant_server, scrape_metrics):
    busy, client = plant_server(metrics_port=0)
    idle, _ = plant_server(metrics_port=0, n_cells=5)
    client.step(2)
    client.step(3)
    assert scrape_metrics(busy.metrics_port)[_handled("Step", "OK")] == 2
    quiet = scrape_metrics(idle.metrics_port)
    assert not any(name == "grpc_server_handled_total" for name, _ in quiet)
    assert quiet[_key("alutwin_plant_cells")] == 5 and quiet[_key("alutwin_plant_steps_total")] == 0
    busy.stop(0)  # the endpoint goes with its server
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{busy.metrics_port}/metrics", timeout=WAIT)


def test_a_server_that_cannot_bind_releases_the_other_port(plant_server):
    busy, _ = plant_server(metrics_port=0)
    port, metrics_port = _free_port(), _free_port()
    with pytest.raises(OSError, match="in use"):  # the metrics port is taken
        create_server(PlantConfig(n_cells=1, seed=0, port=port, metrics_port=busy.metrics_port))
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{busy.port}"):  # the gRPC port is taken
        create_server(PlantConfig(n_cells=1, seed=0, port=busy.port, metrics_port=metrics_port))
    server, bound = create_server(PlantConfig(n_cells=1, seed=0, port=port, metrics_port=metrics_port))
    with server:
        assert (bound, server.metrics_port) == (port, metrics_port)  # neither failure kept a port


# ---------------------------------------------------------------------------------------------------------------
# The drain


def _watch_health(address: str) -> tuple[grpc.Channel, object]:
    channel = grpc.insecure_channel(address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return channel, watch


def _status(message: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(message.status)


def _slow_snapshots(server, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """GetState waits, once it has begun, until the test releases it: a call in flight (begun, release)."""
    begun, release = threading.Event(), threading.Event()
    snapshot = server.potline.snapshot

    def slow(cell: int):
        begun.set()
        release.wait(WAIT)
        return snapshot(cell)

    monkeypatch.setattr(server.potline, "snapshot", slow)
    return begun, release


def test_stop_reports_not_serving_and_lets_the_call_in_flight_finish(plant_server, monkeypatch, rpc_error, until):
    server, client = plant_server(grace_s=WAIT)
    client.step(2)
    begun, release = _slow_snapshots(server, monkeypatch)
    channel, watch = _watch_health(server.address)
    assert _status(next(watch)) == "SERVING"
    result: list = []
    caller = threading.Thread(target=lambda: result.append(client.state(1)))
    caller.start()
    assert begun.wait(WAIT)
    stopper = threading.Thread(target=server.stop)  # default grace: config.grace_s
    t0 = time.monotonic()
    stopper.start()
    assert _status(next(watch)) == "NOT_SERVING"
    watch.cancel()  # an open Watch would hold the server for the whole grace
    channel.close()
    assert until(lambda: server.runtime.closed)  # the clock has stopped and the streams have ended
    # new calls are turned away: UNAVAILABLE from the drain gate, or CANCELLED once grpc's own stop has begun
    # (which of the two depends on timing, seen under load) ...
    assert rpc_error(client.info)[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert caller.is_alive() and stopper.is_alive()  # ... while the one in flight still runs
    release.set()
    caller.join(WAIT)
    stopper.join(WAIT)
    assert not stopper.is_alive() and time.monotonic() - t0 < WAIT  # done once the call finished, not at the grace
    assert len(result) == 1 and (result[0].cell, result[0].step) == (1, 2)


def test_a_call_past_the_grace_is_cancelled(plant_server, monkeypatch, rpc_error):
    server, client = plant_server()
    begun, release = _slow_snapshots(server, monkeypatch)
    errors: list = []
    caller = threading.Thread(target=lambda: errors.append(rpc_error(lambda: client.state(0))[0]))
    caller.start()
    assert begun.wait(WAIT)
    t0 = time.monotonic()
    server.stop(grace=0.3)
    took = time.monotonic() - t0
    caller.join(WAIT)
    release.set()
    assert 0.2 < took < WAIT / 2 and errors and errors[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


_SERVE = (
    "import sys\n"
    "from plant.config import PlantConfig\n"
    "from plant.service import serve\n"
    "serve(PlantConfig(n_cells=2, seed=1, port=0, real_time_factor=2000.0, grace_s=5.0, metrics_port=0))\n"
)


def test_sigterm_drains_a_serving_plant(scrape_metrics, until):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        line = proc.stdout.readline()
        assert f"serving {SERVICE_NAME} on 127.0.0.1:" in line, line + proc.stderr.read()
        assert "no TLS" in line and "commands open (no token)" in line
        address = line.split(" on ")[1].split()[0]
        metrics_port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        with PlantClient(address, timeout=WAIT) as client:
            stream = client.measurements([0])
            steps = [next(stream).step for _ in range(3)]
            assert steps == sorted(steps)
            got = scrape_metrics(metrics_port)
            assert got[_key("alutwin_plant_streams")] == 1 and got[_key("alutwin_plant_steps_total")] >= steps[-1]
            channel, watch = _watch_health(address)
            assert _status(next(watch)) == "SERVING"
            proc.send_signal(signal.SIGTERM)
            assert _status(next(watch)) == "NOT_SERVING"
            watch.cancel()
            channel.close()
            ended = []
            for m in stream:  # the stream ends cleanly: no error, the last messages still arrive
                ended.append(m.step)
            assert not ended or ended[0] > steps[-1]
        assert proc.wait(timeout=WAIT) == 0
        out = proc.stdout.read()
        assert "shutting down" in out, out + proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
