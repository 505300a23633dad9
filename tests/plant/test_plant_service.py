"""PlantService in-process on 127.0.0.1, port 0: contract, oracle, streams, errors, health, reflection, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alutwin.v1 import plant_pb2, plant_pb2_grpc
from plant.client import AUTOMATIC, PlantClient
from plant.config import PlantConfig
from plant.domain import Fault
from plant.excitation import constant
from plant.params import DEFAULT_PARAMS, SPEC_VERSION
from plant.physics import feed_controllers
from plant.potline import Potline
from plant.service import SERVICE_NAME, create_server
from plant.signals import INPUT_NAMES, STATE_NAMES, U, X
from plant.simulator import simulate
from plant.streams import Broadcaster, Subscriber

REPO = Path(__file__).resolve().parents[2]
WAIT = 5.0  # s, the most any test waits for something that should happen at once


def test_info(plant_server):
    _, client = plant_server()
    info = client.info()
    assert info.spec_version == SPEC_VERSION and info.n_cells == 3 and info.dt == 10.0
    assert info.stepped and info.real_time_factor == 0.0 and info.step == 0
    assert [n for n, _ in info.states] == list(STATE_NAMES) and info.states[X.T_BATH] == ("T_bath", "degC")
    assert [n for n, _ in info.inputs] == list(INPUT_NAMES) and info.inputs[U.FEED_AL2O3][1] == "kg/s"
    assert info.outputs[0] == ("superheat", "degC")
    assert info.command_bounds == {
        "alumina_feed": (0.0, 22.0, "kg/s"),
        "alf3_feed": (0.0, 10.0, "kg/s"),
        "acd": (0.04, 0.06, "m"),
    }
    assert info.noise_std is None and info.current_profile == "constant" and info.max_steps_per_call == 8640


def test_fault_codes_match_the_plant():
    assert {f.name: int(f) for f in Fault} == {
        name.removeprefix("FAULT_CODE_"): v for name, v in plant_pb2.FaultCode.items()
    }


def test_stepped_mode_matches_the_simulator(plant_server):
    server, client = plant_server()
    x0 = server.potline.states
    assert client.step(4) == 4
    assert client.step(3) == 7
    expected = simulate(x0, constant(3, 7))
    for cell in range(3):
        m = client.state(cell, include_true=True)
        assert m.step == 7 and m.time_s == 70.0
        # The potline steps the cells in numpy; the simulator may run its compiled C engine, whose exp/pow differ
        # from numpy's SIMD ones in the last bit on some CPUs: equal to rounding after 7 steps.
        np.testing.assert_allclose(m.x_true, expected.x[cell, -1], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(m.x, m.x_true)  # no noise configured: the same values, sent twice
        np.testing.assert_allclose(m.u, expected.u[cell, -1], rtol=1e-12, atol=0)  # feed controllers of the states
        assert m.fault is Fault.NONE and m.fault_step is None
    assert client.state(0).x_true is None  # only when asked for


def test_stream_delivers_increasing_steps_for_the_chosen_cells(plant_server):
    _, client = plant_server()
    with client.measurements([2], include_true=True) as stream, client.measurements(every=2) as sparse:
        first = next(stream)
        assert (first.cell, first.step) == (2, 0) and first.x_true is not None
        assert [(m.cell, m.step) for m in (next(sparse) for _ in range(3))] == [(0, 0), (1, 0), (2, 0)]
        client.step(5)
        got = [next(stream) for _ in range(5)]
        assert [m.step for m in got] == [1, 2, 3, 4, 5] and {m.cell for m in got} == {2}
        np.testing.assert_array_equal(got[-1].x_true, client.state(2, include_true=True).x_true)
        assert [m.step for m in (next(sparse) for _ in range(6))] == [2, 2, 2, 4, 4, 4]
        assert all(m.dropped == 0 for m in got)


def test_manual_alumina_feed_shows_in_u_and_in_the_mass_balance(plant_server):
    _, client = plant_server()
    before = client.state(1).x
    assert client.set_inputs(1, alumina_feed=1.5, acd=0.052) == 0
    client.step(1)
    m = client.state(1)
    assert m.u[U.FEED_AL2O3] == 1.5 and m.u[U.ACD] == 0.052
    assert m.manual == {"alumina_feed": 1.5, "alf3_feed": None, "acd": 0.052}
    gain = m.x[X.M_AL2O3] - before[X.M_AL2O3]
    assert gain == pytest.approx((1.5 - DEFAULT_PARAMS.k3 * m.u[U.CURRENT]) * 10.0, rel=1e-9)
    client.set_inputs(1, alumina_feed=AUTOMATIC)
    x = client.state(1).x
    client.step(1)
    m = client.state(1)
    assert m.manual["alumina_feed"] is None and m.manual["acd"] == 0.052
    assert m.u[U.FEED_AL2O3] == feed_controllers(x, 10.0)[0]


def _cmd(cell: int, **fields: float) -> plant_pb2.CellCommand:
    return plant_pb2.CellCommand(cell=cell, **{k: plant_pb2.InputCommand(manual=v) for k, v in fields.items()})


@pytest.mark.parametrize(
    ("commands", "code", "words"),
    [
        ([_cmd(0, alumina_feed=23.0)], "INVALID_ARGUMENT", ["alumina_feed", "23", "[0, 22]"]),
        ([_cmd(0, alf3_feed=10.5)], "INVALID_ARGUMENT", ["alf3_feed", "10.5", "[0, 10]"]),
        ([_cmd(0, acd=0.035)], "INVALID_ARGUMENT", ["acd", "0.035", "[0.04, 0.06]"]),
        ([_cmd(0, acd=float("nan"))], "INVALID_ARGUMENT", ["acd", "nan", "finite"]),
        ([_cmd(0, alumina_feed=float("inf"))], "INVALID_ARGUMENT", ["alumina_feed", "inf", "finite"]),
        ([_cmd(1, acd=0.05), _cmd(1, acd=0.05)], "INVALID_ARGUMENT", ["cell 1", "twice"]),
        ([], "INVALID_ARGUMENT", ["commands", "empty"]),
        (
            [plant_pb2.CellCommand(cell=0, acd=plant_pb2.InputCommand())],
            "INVALID_ARGUMENT",
            ["acd", "neither"],
        ),
        ([_cmd(0, acd=0.05), _cmd(17, acd=0.05)], "NOT_FOUND", ["cell 17", "0..2"]),
    ],
)
def test_bad_commands_are_refused_with_the_field_named(plant_server, commands, code, words, rpc_error):
    server, client = plant_server()
    got, details = rpc_error(lambda: client.set_many(commands))
    assert got == getattr(grpc.StatusCode, code)
    for w in words:
        assert w in details
    assert np.isnan(server.potline.manual).all()  # nothing was applied, not even the good commands


def test_other_bad_requests(plant_server, rpc_error):
    _, client = plant_server(max_steps_per_call=100)
    assert rpc_error(lambda: client.state(3))[0] == grpc.StatusCode.NOT_FOUND
    assert rpc_error(lambda: next(client.measurements([0, 9])))[0] == grpc.StatusCode.NOT_FOUND
    code, details = rpc_error(lambda: client.step(0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "n = 0" in details
    code, details = rpc_error(lambda: client.step(101))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "[1, 100]" in details
    assert client.info().step == 0


def test_an_unexpected_error_is_internal_without_details(plant_server, monkeypatch, rpc_error):
    server, client = plant_server()

    def broken(cell):
        raise RuntimeError("boom in /home/secret/plant/potline.py")

    monkeypatch.setattr(server.potline, "snapshot", broken)
    code, details = rpc_error(lambda: client.state(0))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details and "Traceback" not in details and "boom" not in details
    assert client.step(2) == 2  # the server goes on


def test_a_faulted_cell_reports_its_fault_and_never_nan(plant_server, rpc_error):
    _, client = plant_server()
    client.set_inputs(0, alumina_feed=22.0)  # 220 kg of alumina per step: out of the 1-8 % window in a few steps
    client.step(12)
    m = client.state(0, include_true=True)
    assert m.fault is Fault.ALUMINA_OUT_OF_RANGE and "alumina" in m.fault_text
    assert m.fault_step is not None and m.fault_step < 12
    assert np.isfinite(m.x).all() and np.isfinite(m.u).all() and np.isfinite(list(m.outputs.values())).all()
    code, details = rpc_error(lambda: client.set_inputs(0, alumina_feed=AUTOMATIC))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cell 0" in details
    assert client.state(1).fault is Fault.NONE
    client.step(3)
    np.testing.assert_array_equal(client.state(0, include_true=True).x_true, m.x_true)  # held


def test_min_ledge_mass_from_config_faults_the_thin_ledges(plant_server):
    server, client = plant_server(n_cells=6, seed=1, min_ledge_mass=3300.0)
    thin = server.potline.states[:, X.M_LEDGE] < 3300.0
    assert thin.any() and not thin.all()
    client.step(1)
    for cell in range(6):
        m = client.state(cell)
        assert (m.fault is Fault.LEDGE_MELTED) == thin[cell]
        assert np.isfinite(m.x).all()


def test_health_serving_then_not_serving_when_shutdown_begins(plant_server, rpc_error):
    server, client = plant_server()
    assert client.health() == "SERVING" and client.health(SERVICE_NAME) == "SERVING"
    assert rpc_error(lambda: client.health("no.such.Service"))[0] == grpc.StatusCode.NOT_FOUND
    server.begin_shutdown()
    assert client.health() == "NOT_SERVING" and client.health(SERVICE_NAME) == "NOT_SERVING"


def test_calls_while_shutting_down_are_unavailable(plant_server, rpc_error):
    server, client = plant_server()
    server.runtime.close()  # what stop() does before it stops the gRPC server
    for call in (client.info, lambda: client.step(1), lambda: next(client.measurements())):
        code, details = rpc_error(call)
        assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details


def test_reflection_lists_and_describes_the_service(plant_server):
    server, _ = plant_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=WAIT))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    files = described.file_descriptor_response.file_descriptor_proto
    assert len(files) >= 1 and b"alutwin/v1/plant.proto" in files[0]


def test_a_client_that_disconnects_mid_stream_is_cleaned_up(plant_server, until):
    server, client = plant_server()
    stream = client.measurements()
    next(stream)
    assert server.runtime.broadcaster.count == 1
    stream.cancel()
    assert until(lambda: server.runtime.broadcaster.count == 0)
    client.step(3)  # publishing after the disconnect is harmless
    with client.measurements([1]) as again:
        assert next(again).step == 3
    # a client whose channel closes abruptly is cleaned up too
    other = PlantClient(server.address)
    s2 = other.measurements()
    next(s2)
    other.close()
    assert until(lambda: server.runtime.broadcaster.count == 0)


def test_too_many_streams_is_resource_exhausted(plant_server, rpc_error):
    _, client = plant_server(max_streams=1, max_workers=3)
    with client.measurements() as s1:
        next(s1)
        code, details = rpc_error(lambda: next(client.measurements()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams" in details
        assert client.step(1) == 1  # unary calls still get a thread


def test_a_slow_reader_loses_the_oldest_messages():
    sub = Subscriber(cells=None, every=1, maxlen=3)
    line = Potline(1, seed=0)
    initial = line.snapshots()
    for _ in range(10):
        line.step()
        sub.offer(line.snapshots())
    assert sub.dropped == 7
    assert [sub.get(0)[0].step for _ in range(3)] == [8, 9, 10]
    assert sub.get(0) is None  # empty: times out
    broadcaster = Broadcaster(queue_size=2, max_subscribers=2)
    s = broadcaster.subscribe(frozenset({0}), 1, initial)
    broadcaster.close()
    assert s.closed and broadcaster.count == 0


def test_slow_stream_over_grpc_reports_drops(plant_server):
    server, client = plant_server(n_cells=1, stream_queue_size=4)
    # no window growth: the transport buffers a few hundred messages, the rest must wait in the queue
    slow = PlantClient(server.address, timeout=WAIT, options=[("grpc.http2.bdp_probe", 0)])
    n = 800
    with slow, slow.measurements([0]) as stream:
        assert next(stream).step == 0
        client.step(n)
        got = []
        while not got or got[-1].step < n:
            got.append(next(stream))
    steps = [m.step for m in got]
    assert steps == sorted(steps) and steps[-1] == n
    assert got[-1].dropped > 0 and len(got) + got[-1].dropped == n


def test_real_time_mode_advances_on_its_own(plant_server, until, rpc_error):
    _, client = plant_server(real_time_factor=5000.0)  # one 10 s step every 2 ms
    info = client.info()
    assert not info.stepped and info.real_time_factor == 5000.0
    with client.measurements([0]) as stream:
        steps = [next(stream).step for _ in range(6)]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    k = client.state(0).step
    assert until(lambda: client.state(0).step >= k + 20)
    code, details = rpc_error(lambda: client.step(1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "stepped mode" in details


def test_streams_end_cleanly_when_the_server_stops(plant_server):
    server, client = plant_server(real_time_factor=1000.0)
    stream = client.measurements()
    next(stream)
    ended = threading.Event()
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as exc:  # pragma: no cover - the failure the test looks for
            errors.append(exc)
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    t0 = time.monotonic()
    server.stop(grace=2.0)
    assert ended.wait(WAIT) and not errors
    assert time.monotonic() - t0 < 2.0  # streams ended at once; the grace was not needed
    assert server.runtime.broadcaster.count == 0


def test_calls_in_flight_get_the_whole_grace_after_the_clock_stops(plant_server, monkeypatch):
    server, _ = plant_server(real_time_factor=1000.0)
    close = server.runtime.close
    monkeypatch.setattr(server.runtime, "close", lambda: (time.sleep(0.5), close()))  # a clock slow to stop
    stop, graces = server.grpc_server.stop, []
    monkeypatch.setattr(server.grpc_server, "stop", lambda grace: (graces.append(grace), stop(grace))[1])
    server.stop(grace=2.0)
    assert server.runtime.closed and len(graces) == 1
    assert 1.9 < graces[0] <= 2.0  # not 2.0 less the 0.5 s the clock took (the twin counts its drain in)


def test_cli_serve_prints_the_address_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "plant.yaml"
    config.write_text("n_cells: 2\nseed: 3\nport: 50051\n")
    cmd = [sys.executable, "-m", "alutwin", "plant", "serve", "--config", str(config), "--port", "0", "--cells", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving alutwin.v1.PlantService on 127.0.0.1:" in line, line + proc.stderr.read()
        address = line.split(" on ")[1].split()[0]
        with PlantClient(address) as client:
            assert client.info().n_cells == 5  # the flag overrides the file
            with grpc.insecure_channel(address) as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_is_a_clear_error(plant_server):
    server, _ = plant_server()
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        create_server(PlantConfig(n_cells=1, seed=0, port=server.port))


def test_raw_stub_round_trip(plant_server):
    server, _ = plant_server()
    with grpc.insecure_channel(server.address) as ch:
        stub = plant_pb2_grpc.PlantServiceStub(ch)
        req = plant_pb2.SetInputsRequest(
            commands=[
                plant_pb2.CellCommand(
                    cell=2,
                    alf3_feed=plant_pb2.InputCommand(manual=0.4),
                    acd=plant_pb2.InputCommand(automatic=plant_pb2.Automatic()),
                )
            ]
        )
        assert stub.SetInputs(req, timeout=WAIT).step == 0
        assert stub.Step(plant_pb2.StepRequest(n=2), timeout=WAIT).step == 2
        snap = stub.GetState(plant_pb2.GetStateRequest(cell=2), timeout=WAIT)
    assert snap.manual.HasField("alf3_feed") and not snap.manual.HasField("acd")
    assert snap.u[U.FEED_ALF3] == 0.4 and len(snap.x) == 8 and len(snap.x_true) == 0
    assert snap.fault.code == plant_pb2.FAULT_CODE_NONE and not snap.fault.HasField("step")
