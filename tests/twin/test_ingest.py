"""The twin's IngestService on 127.0.0.1: acknowledgements after commit, quarantine over the wire, the token, bad
requests, limits, drain, health and reflection, config; nothing acknowledged is lost when ``alutwin twin serve``
is killed with SIGKILL (several times); the plant-to-twin bridge resuming after either side restarts."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alutwin.v1 import ingest_pb2, ingest_pb2_grpc
from plant.config import PlantConfig
from plant.excitation import sample_initial_states
from plant.potline import Potline
from plant.signals import X
from twin.commands import register_twin
from twin.config import HistorianConfig, TwinConfig
from twin.historian import (
    INGEST_SERVICE,
    Backoff,
    BridgeConfig,
    BridgeError,
    BridgeStats,
    IngestClient,
    QuarantineReason,
    Sample,
    open_historian,
    run_bridge,
)
from twin.serving import MANAGEMENT_METHODS, TwinServer

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"
WAIT = 10.0
U = np.array([0.0, 140_000.0, 0.0, 0.0, 0.05])
X0 = sample_initial_states(np.random.default_rng(3), 3)  # (3, 8)


def sample(cell: int, step: int) -> Sample:
    """A deterministic, in-bounds sample of ``cell`` at ``step``: resending it gives the same values."""
    x = X0[cell % 3].copy()
    x[X.T_BATH] += 1e-3 * step
    return Sample(cell, step, 10.0 * step, x, U)


@pytest.fixture
def make_twin(twin_server) -> Callable[..., TwinServer]:
    """Twins (the shared ``twin_server`` fixture) with this module's token; the servers only."""
    return lambda token=TOKEN, **settings: twin_server(token=token, **settings)[0]


def test_ingest_acknowledges_committed_batches_and_reports_quarantine(make_twin):
    twin = make_twin()
    assert f"/{INGEST_SERVICE}/Ingest" in MANAGEMENT_METHODS
    bad = Sample(1, 3, 30.0, np.full(8, np.nan), U)
    with IngestClient(twin.address, token=TOKEN, timeout=WAIT) as client:
        assert client.health() == "SERVING"
        with client.stream() as stream:
            a1 = stream.send([sample(0, k) for k in range(5)] + [bad])
            assert twin.ingest.historian.count() == 5  # committed before the ack came back
            a2 = stream.send([sample(0, 4), sample(1, 0), sample(0, 5)])
        assert (a1.batch_id, a1.accepted, a1.progress) == (1, 5, {0: 4})
        assert [(q.index, q.reason, q.cell, q.step) for q in a1.quarantined] == [(5, QuarantineReason.NON_FINITE, 1, 3)]
        assert (a2.batch_id, a2.accepted, a2.progress) == (2, 2, {0: 5, 1: 0})
        assert (
            a2.quarantined[0].reason is QuarantineReason.DUPLICATE and "identical re-send" in a2.quarantined[0].detail
        )
        big = client.ingest([sample(2, k) for k in range(25)], batch_size=10)  # three batches on one stream
        assert (big.accepted, big.progress, big.quarantined) == (25, {2: 24}, ())
        info = client.info()
        assert {c: (h.count, h.first_step, h.last_step) for c, h in info.cells.items()} == {
            0: (6, 0, 5),
            1: (1, 0, 0),
            2: (25, 0, 24),
        }
        assert info.total_samples == 32 and info.backend == "sqlite" and info.max_batch_samples == 10_000
        assert info.quarantine_counts[QuarantineReason.NON_FINITE] == 1
        assert info.quarantine_counts[QuarantineReason.DUPLICATE] == 1
        assert set(client.info(cells=[2]).cells) == {2}
        listed = client.quarantine()
        assert [q.reason for q in listed] == [QuarantineReason.NON_FINITE, QuarantineReason.DUPLICATE]
        assert np.isnan(listed[0].x).all() and listed[0].detail == "x: m_ledge = nan is not a finite number"
        assert [q.step for q in client.quarantine(cell=0)] == [4]
    window = twin.ingest.historian.window(0)
    np.testing.assert_array_equal(window.x, np.stack([sample(0, k).x for k in range(6)]))


def test_ingest_needs_the_token(make_twin, rpc_error):
    twin = make_twin()
    for token, code in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("wrong-token-0123456789", grpc.StatusCode.UNAUTHENTICATED),
    ):
        with IngestClient(twin.address, token=token, timeout=WAIT) as client:
            assert rpc_error(lambda c=client: c.ingest([sample(0, 0)], batch_size=5))[0] == code
            assert client.info().total_samples == 0  # reading is open
    off = make_twin(token=None)
    with IngestClient(off.address, token=TOKEN, timeout=WAIT) as client:
        code, details = rpc_error(lambda: client.ingest([sample(0, 0)], batch_size=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no token configured" in details
    assert twin.ingest.historian.count() == 0 and off.ingest.historian.count() == 0


def test_bad_requests_and_limits(make_twin, rpc_error):
    twin = make_twin(historian=HistorianConfig(max_batch_samples=4, max_ingest_streams=1, max_quarantine_list=5))
    channel = grpc.insecure_channel(twin.address)
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    meta = [("authorization", f"Bearer {TOKEN}")]
    try:
        for request, words in (
            (ingest_pb2.IngestRequest(batch_id=7), "batch 7: samples is empty"),
            (
                ingest_pb2.IngestRequest(batch_id=8, samples=[ingest_pb2.Sample(cell=0, step=k) for k in range(5)]),
                "5 samples is more than this server's max_batch_samples (4)",
            ),
        ):
            code, details = rpc_error(lambda r=request: list(stub.Ingest(iter([r]), metadata=meta, timeout=WAIT)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details
        code, details = rpc_error(lambda: stub.ListQuarantine(ingest_pb2.ListQuarantineRequest(limit=6), timeout=WAIT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_quarantine_list (5)" in details
        with IngestClient(twin.address, token=TOKEN, timeout=WAIT) as client, client.stream() as first:
            first.send([sample(0, 0)])
            code, details = rpc_error(lambda: client.ingest([sample(0, 1)], batch_size=1))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "(1)" in details
            first.send([sample(0, 1)])  # the open stream is unaffected
        # a wrongly shaped sample over the wire is quarantined, not an error of the call
        raw = ingest_pb2.IngestRequest(samples=[ingest_pb2.Sample(cell=0, step=2, time_s=20.0, x=[1.0], u=list(U))])
        deadline = time.monotonic() + WAIT
        while True:  # the first stream's slot is freed when the server sees it end, a moment after the client
            try:
                (ack,) = list(stub.Ingest(iter([raw]), metadata=meta, timeout=WAIT))
                break
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert ack.accepted == 0 and ack.quarantined[0].reason == ingest_pb2.QUARANTINE_REASON_BAD_SHAPE
    finally:
        channel.close()


def test_health_reflection_and_drain(make_twin, rpc_error):
    twin = make_twin()
    channel = grpc.insecure_channel(twin.address)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        assert INGEST_SERVICE in {s.name for s in reply.list_services_response.service}
    finally:
        channel.close()
    with IngestClient(twin.address, token=TOKEN, timeout=WAIT) as client, client.stream() as stream:
        stream.send([sample(0, 0)])
        start = time.monotonic()
        twin.stop(grace=5.0)  # an idle open stream must not hold the shutdown for the whole grace
        assert time.monotonic() - start < 2.0
        assert rpc_error(lambda: stream.send([sample(0, 1)]))[0] == grpc.StatusCode.UNAVAILABLE


def test_historian_config(tmp_path, make_twin, rpc_error):
    off = make_twin(historian={"enabled": False})
    assert off.ingest is None and not (tmp_path / "store0" / "historian.sqlite").exists()
    with IngestClient(off.address, token=TOKEN, timeout=WAIT) as client:
        assert rpc_error(lambda: client.info())[0] == grpc.StatusCode.UNIMPLEMENTED
    on = make_twin()
    assert on.ingest.historian.path == tmp_path / "store1" / "historian.sqlite"  # inside the store by default
    yaml = tmp_path / "twin.yaml"
    yaml.write_text("store: s\nport: 0\nhistorian:\n  path: data/h.sqlite\n  max_batch_samples: 50\n")
    cfg = TwinConfig.from_yaml(yaml)
    assert cfg.historian_path == tmp_path / "data" / "h.sqlite" and cfg.historian.max_batch_samples == 50
    yaml.write_text("store: s\nport: 0\nhistorian:\n  pth: x\n")
    with pytest.raises(ValueError, match=r"unknown key 'historian\.pth'"):
        TwinConfig.from_yaml(yaml)
    with pytest.raises(ValueError, match="max_batch_samples: must be >= 1, got 0"):
        HistorianConfig(max_batch_samples=0)


# ---------------------------------------------------------------------------------------------------------------
# Crash safety: SIGKILL the twin while it acknowledges batches


def _start_twin(config: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALUTWIN_TWIN_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "alutwin", "twin", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    line = proc.stdout.readline()
    if " on 127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    assert "historian" in line
    return proc, line.split(" on ")[1].split()[0]


def _check_everything_acked_is_stored(client: IngestClient, acked: dict[int, int]) -> dict[int, int]:
    """Every acknowledged step is stored with its exact values, contiguously from 0; returns the last steps."""
    info = client.info()
    last = {c: h.last_step for c, h in info.cells.items()}
    for cell, step in acked.items():
        assert last.get(cell, -1) >= step, f"cell {cell}: step {step} was acknowledged but is lost"
        assert info.cells[cell].count == last[cell] + 1
    assert sum(info.quarantine_counts.values()) == 0
    return last


def test_nothing_acknowledged_is_lost_when_the_twin_is_killed(tmp_path, until):
    config = tmp_path / "twin.yaml"
    config.write_text("store: store\nport: 0\ngrace_s: 0\nengine: numpy\ntoken_env: ALUTWIN_TWIN_TOKEN\n")
    rng = np.random.default_rng(0)
    acked: dict[int, int] = {}  # cell -> highest acknowledged step
    kills = 0
    for _ in range(3):
        proc, address = _start_twin(config)
        try:
            with IngestClient(address, token=TOKEN, timeout=WAIT) as client:
                last = _check_everything_acked_is_stored(client, acked)
                errors: list[BaseException] = []
                n_acks = [0]

                def feed(client=client, last=last, errors=errors, n_acks=n_acks) -> None:
                    nxt = {c: last.get(c, -1) + 1 for c in range(3)}
                    try:
                        with client.stream() as stream:
                            while True:
                                batch = [sample(c, nxt[c] + j) for c in range(3) for j in range(7)]
                                ack = stream.send(batch)
                                assert ack.accepted == len(batch), ack.quarantined[:1]
                                for c in range(3):
                                    nxt[c] += 7
                                    acked[c] = ack.progress[c]
                                n_acks[0] += 1
                    except grpc.RpcError as exc:
                        errors.append(exc)

                t = threading.Thread(target=feed)
                t.start()
                assert until(lambda n_acks=n_acks: n_acks[0] >= 3), "no acknowledgements"
                time.sleep(float(rng.uniform(0.0, 0.05)))  # a random moment, batches in flight
                proc.send_signal(signal.SIGKILL)
                proc.wait(WAIT)
                kills += 1
                t.join(WAIT)
                assert not t.is_alive() and errors, "the stream did not notice the twin's death"
                assert errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), errors[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    proc, address = _start_twin(config)
    try:
        with IngestClient(address, token=TOKEN, timeout=WAIT) as client:
            last = _check_everything_acked_is_stored(client, acked)
            assert kills == 3 and min(acked.values()) >= 3 * 3 * 7 - 1
        # the stored values are exactly what was sent (read the file directly, as another process may)
        with open_historian(tmp_path / "store" / "historian.sqlite") as h:
            for c in range(3):
                w = h.window(c)
                np.testing.assert_array_equal(w.steps, np.arange(last[c] + 1))
                np.testing.assert_array_equal(w.x, np.stack([sample(c, k).x for k in range(last[c] + 1)]))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


# ---------------------------------------------------------------------------------------------------------------
# The bridge


def test_bridge_resumes_after_the_twin_and_the_plant_restart(tmp_path, make_twin, plant_server, until):
    plant, _ = plant_server(n_cells=2, seed=3)
    plant_port = plant.port
    twin = make_twin(store=tmp_path / "store")
    twin_port = twin.port
    stop = threading.Event()
    stats = BridgeStats()
    result: list = []
    bridge = threading.Thread(
        target=lambda: result.append(
            run_bridge(
                BridgeConfig(
                    plant=plant.address, twin=twin.address, batch_size=16, flush_s=0.05, backoff=Backoff(0.05, 0.2)
                ),
                token=TOKEN,
                stop=stop,
                stats=stats,
            )
        )
    )
    bridge.start()
    historian = lambda: twin.ingest.historian  # noqa: E731 - the twin object changes on restart

    def stored(n: int) -> bool:
        h = historian()
        return h.count(0) == n and h.count(1) == n

    try:
        assert until(lambda: stats.plant_connects >= 1 and stats.twin_connects >= 1)
        plant.runtime.advance(20)
        assert until(lambda: stored(21)), (historian().count(), stats)
        twin.stop(0)  # the twin goes away; the plant goes on and the bridge keeps what it reads
        plant.runtime.advance(15)
        assert until(lambda: stats.last_error.startswith("twin"))
        twin = make_twin(store=tmp_path / "store", port=twin_port)  # the same twin again, on the same port
        assert until(lambda: stored(36)), (historian().count(), stats)
        plant.stop(0)  # now the plant restarts (same seed: it replays steps 0..) on the same port
        plant, _ = plant_server(n_cells=2, seed=3, port=plant_port)
        assert until(lambda: stats.plant_connects >= 2)  # the plant has no history: reconnect, then step
        plant.runtime.advance(40)
        assert until(lambda: stored(41)), (historian().count(), stats)
    finally:
        stop.set()
        bridge.join(WAIT)
        plant.stop(0)
    assert not bridge.is_alive() and result and result[0] is stats
    assert stats.twin_connects >= 2 and stats.plant_connects >= 2 and stats.skipped > 0
    assert sum(historian().quarantine_counts().values()) == 0  # nothing was sent twice
    oracle = Potline.from_config(PlantConfig(n_cells=2, seed=3, port=0))
    ys = [np.stack([s.y for s in oracle.snapshots()])]
    for _ in range(40):
        oracle.step()
        ys.append(np.stack([s.y for s in oracle.snapshots()]))
    for c in range(2):  # the served potline and this one run the same code from the same seed: equal exactly
        w = historian().window(c)
        np.testing.assert_array_equal(w.steps, np.arange(41))
        np.testing.assert_array_equal(w.x, np.stack(ys)[:, c])


def test_bridge_stops_on_a_wrong_token(make_twin, plant_server):
    plant, _ = plant_server(n_cells=1, seed=0)
    twin = make_twin()
    with pytest.raises(BridgeError, match="UNAUTHENTICATED"):
        run_bridge(BridgeConfig(plant=plant.address, twin=twin.address, flush_s=0.05), token="wrong-token-0123456789")
    with pytest.raises(ValueError, match="batch_size: must be >= 1, got 0"):
        run_bridge(BridgeConfig(plant="127.0.0.1:1", twin="127.0.0.1:1", batch_size=0))


def test_the_bridge_command_is_registered(capsys):
    parser = argparse.ArgumentParser(prog="alutwin")
    register_twin(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["twin", "ingest", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--plant" in out and "--twin" in out and "--token-env" in out
    args = parser.parse_args(["twin", "ingest", "--plant", "127.0.0.1:1", "--twin", "127.0.0.1:2", "--cells", "0", "2"])
    assert (args.plant, args.twin, args.cells, args.token_env) == (
        "127.0.0.1:1",
        "127.0.0.1:2",
        [0, 2],
        None,  # not given: BridgeConfig's default holds (tests/twin/test_config.py)
    )
