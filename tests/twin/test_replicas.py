"""Twin replicas on one model store: two ``alutwin twin serve`` processes agree on the champion after a swap
within ``store_poll_s`` plus a margin, concurrent registrations through both lose nothing, and a second writer of
one historian stops at start. In-process: the store's lock, the poll and the events it makes."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from identification.rollout import make_rollout_engine
from tests.conftest import TOKEN
from twin.client import TwinClient
from twin.historian import HistorianError, SQLiteHistorian
from twin.registry import ModelRecord, ModelRegistry, ModelStore, StoreState, VersionRecord, events_between
from twin.results import EventType

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.5
# A swap is served everywhere within store_poll_s plus the load of the version (small models with the numpy
# engine: milliseconds) plus scheduling on a shared 2-core machine: 2 s of margin.
MARGIN_S = 2.0
WAIT = 60.0


def _config(tmp_path: Path, name: str, historian: bool) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = f"store: store\nport: 0\nengine: numpy\nstore_poll_s: {POLL_S}\ntoken_env: ALUTWIN_TEST_TOKEN\n"
    path.write_text(text + ("" if historian else "historian:\n  enabled: false\n"))
    return path


def _start(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALUTWIN_TEST_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "alutwin", "twin", "serve", "--config", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def _address(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert " on 127.0.0.1:" in line, line + proc.stderr.read()
    return line.split(" on ")[1].split()[0]


def _champion(client: TwinClient, x0, u) -> int:  # the version a plain Predict is served by
    return client.predict("cell", x0, u).model.version


def _wait_for(client: TwinClient, x0, u, version: int) -> float:
    """Seconds until ``client`` serves ``version`` as the champion."""
    t0 = time.monotonic()
    while _champion(client, x0, u) != version:
        assert time.monotonic() - t0 < WAIT, f"the replica never served version {version}"
        time.sleep(0.01)
    return time.monotonic() - t0


def test_two_replicas_agree_on_the_champion(tmp_path, twin_models, model_files, scenarios, rpc_error):
    v1, v2 = model_files(twin_models["v1"][0]), model_files(twin_models["v2"][0])
    x0, u = scenarios(b=1, h=5)
    a_proc, b_proc = _start(_config(tmp_path, "a", True)), _start(_config(tmp_path, "b", False))
    procs = [a_proc, b_proc]
    try:
        a_addr, b_addr = _address(a_proc), _address(b_proc)
        with TwinClient(a_addr, token=TOKEN) as a, TwinClient(b_addr, token=TOKEN) as b:
            assert a.register("cell", v1, set_alias="champion")[0].version == 1
            first = _wait_for(b, x0, u, 1)  # B loads version 1 from the store
            assert b.register("cell", v2)[0].version == 2  # B read A's state under the lock: no second "1"
            with b.watch("cell") as events:
                assert next(events).type is EventType.SNAPSHOT
                assert a.set_alias("cell", "champion", 2)[0] == 1
                took = _wait_for(b, x0, u, 2)
                event = next(events)
            assert (event.type, event.version, event.previous_version) == (EventType.ALIAS_MOVED, 2, 1)
            assert _champion(a, x0, u) == 2
            print(f"propagation: first version {first:.3f} s, swap {took:.3f} s (store_poll_s {POLL_S})")
            assert first <= POLL_S + MARGIN_S and took <= POLL_S + MARGIN_S

            # 10 registrations through each replica at once: 20 distinct versions, none lost
            def register(client: TwinClient) -> int:
                return client.register("cell", v1)[0].version

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                versions = list(pool.map(register, [a, b] * 10))
            assert sorted(versions) == list(range(3, 23))
            doc = json.loads((tmp_path / "store" / "registry.json").read_text())
            assert sorted(int(v) for v in doc["models"]["cell"]["versions"]) == list(range(1, 23))
            assert doc["models"]["cell"]["aliases"] == {"champion": 2}
            deadline = time.monotonic() + POLL_S + MARGIN_S  # 2 + 1 + 1 + 20 changes: revision 24 on both
            while [c.list_models()[1] for c in (a, b)] != [24, 24]:
                assert time.monotonic() < deadline, "the replicas did not take in every change"
                time.sleep(0.05)
            assert all(len(c.list_models()[0][0].versions) == 22 for c in (a, b))

            # a third server on the same historian file stops at start, naming the writer
            c_proc = _start(_config(tmp_path, "c", True))
            procs.append(c_proc)
            _, err = c_proc.communicate(timeout=WAIT)
            assert c_proc.returncode == 2, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "already has a writer (pid " in lines[0], err
            assert f"pid {a_proc.pid} " in lines[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=WAIT)


# -- in process ------------------------------------------------------------------------------------------------


def test_the_store_lock_excludes_other_descriptors(tmp_path):
    store = ModelStore(tmp_path)
    order: list[str] = []
    with store.locked():

        def second() -> None:
            with store.locked(shared=True):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first")
    t.join(WAIT)
    assert order == ["first", "second"]


def test_a_replica_takes_in_changes_through_the_poll(tmp_path, twin_models, model_files):
    v1, v2 = model_files(twin_models["v1"][0]), model_files(twin_models["v2"][0])
    numpy = functools.partial(make_rollout_engine, engine="numpy")
    a = ModelRegistry(ModelStore(tmp_path), engine_for=numpy)
    b = ModelRegistry(ModelStore(tmp_path), poll_s=0.05, engine_for=numpy)
    try:
        watcher = b.watch("cell")
        first = watcher.get(1.0)
        assert first is not None and first.type is EventType.SNAPSHOT
        a.register("cell", *v1, set_alias="champion")
        deadline = time.monotonic() + 5.0
        while b.active() != [("cell", "champion", 1)]:
            assert time.monotonic() < deadline, "the poll did not take the change in"
            time.sleep(0.01)
        got = [watcher.get(1.0), watcher.get(1.0)]
        assert [(e.type, e.version) if e is not None else None for e in got] == [
            (EventType.VERSION_REGISTERED, 1),
            (EventType.ALIAS_MOVED, 1),
        ]
        served, _ = b.register("cell", *v2, set_alias="champion")  # B's change starts from A's state
        assert served.version == 2 and b.state.revision == a.state.revision + 2
        assert a.resolve("cell", version=2).version == 2  # a version A does not know yet: A looks at once
    finally:
        a.close()
        b.close()


def test_events_between_two_states():
    rec = ModelRecord(3, {1: VersionRecord(1, "dense", "t"), 2: VersionRecord(2, "dense", "t")}, {"champion": 1})
    old = StoreState(4, {"cell": rec})
    moved = StoreState(6, {"cell": rec.with_alias("champion", 2)})
    (event,) = events_between(old, moved, 0)
    assert (event.type, event.version, event.previous_version, event.revision) == (EventType.ALIAS_MOVED, 2, 1, 6)
    back = StoreState(7, {"cell": moved.models["cell"].rolled_back("champion")})
    (event,) = events_between(moved, back, 0)
    assert (event.type, event.version, event.previous_version) == (EventType.ROLLED_BACK, 1, 2)


def test_a_second_historian_writer_is_refused(tmp_path):
    first, second = SQLiteHistorian(tmp_path / "h.sqlite"), SQLiteHistorian(tmp_path / "h.sqlite")
    first.claim_writer()
    with pytest.raises(HistorianError, match=rf"already has a writer \(pid {os.getpid()} on "):
        second.claim_writer()
    first.close()
    second.claim_writer()  # the writer's lock goes with it
    second.close()


def _predicts(server, scrape_metrics) -> float:
    key = ("grpc_server_handled_total", frozenset(
        {"grpc_service": "alutwin.v1.PredictionService", "grpc_method": "Predict", "grpc_code": "OK"}.items()
    ))  # fmt: skip
    return scrape_metrics(server.metrics_port).get(key, 0.0)


def test_one_client_spreads_its_calls_over_the_replicas(
    tmp_path, twin_models, model_files, scenarios, start_twin, scrape_metrics
):
    """A target naming both replicas (``ipv4:a,b``, what ``dns:///`` of a headless Service resolves to) is load
    balanced by the client (round robin): both serve Predicts; once one stops, the other serves every call."""
    v1 = model_files(twin_models["v1"][0])
    x0, u = scenarios(b=1, h=5)
    settings = {"engine": "numpy", "store_poll_s": 0.05, "historian": {"enabled": False}, "metrics_port": 0}
    with start_twin(tmp_path, **settings) as (a, a_client), start_twin(tmp_path, **settings) as (b, _):
        a_client.register("cell", v1, set_alias="champion")
        target = f"ipv4:{a.address},{b.address}"
        with TwinClient(target, timeout=WAIT) as client:
            deadline = time.monotonic() + WAIT
            while True:  # until B has read the registration from the store
                try:
                    [client.predict("cell", x0, u) for _ in range(4)]
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "replica B never served the model"
                    time.sleep(0.05)
            before = [_predicts(s, scrape_metrics) for s in (a, b)]
            for _ in range(20):
                assert client.predict("cell", x0, u).model.version == 1
            served = [_predicts(s, scrape_metrics) - n for s, n in zip((a, b), before, strict=True)]
            assert sum(served) == 20 and min(served) >= 5, served  # round robin: about 10 each
            b.stop(0)
            for _ in range(10):  # the stopped replica is skipped
                assert client.predict("cell", x0, u).model.version == 1
