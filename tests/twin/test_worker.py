"""The online re-fit worker (twin/online/) against an in-process twin on 127.0.0.1: a genuine improvement is
promoted and clients see the switch atomically, a challenger trained on poisoned data is rejected while the
champion keeps serving, decisions are recorded with their figures, the worker survives the twin restarting,
and the demo runs with a shrunken horizon."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from alutwin.cli import main as alutwin
from apps.online_demo import DEFAULT_SEED_MODEL
from apps.online_demo import main as demo_main
from identification.modelfile import load_model, save_model
from identification.online import Gate, RefitConfig, ScreenConfig, refit, segments_from_window
from identification.rollout import make_rollout_engine
from plant.potline import Potline
from plant.scenarios import ScenarioEvent
from twin.client import TwinClient
from twin.historian import IngestClient, Sample
from twin.online import OnlineWorker, WorkerConfig
from twin.online.records import fresh_state, load_state, save_state

TOKEN = "test-token-0123456789abcdef"
HOUR = 360


def potline_samples(n_cells: int, hours: float, events=(), seed: int = 1) -> tuple[list[Sample], np.ndarray]:
    """The potline's measured samples and its true states ``(N, T+1, 8)``."""
    pl = Potline(n_cells, seed, current_profile="aprbs", scenario=events)
    samples, xs = [], []
    for k in range(int(hours * HOUR) + 1):
        if k:
            pl.step(1)
        snaps = pl.snapshots()
        samples += [Sample(s.cell, s.step, s.time_s, s.y, s.u) for s in snaps]
        xs.append([s.x for s in snaps])
    return samples, np.asarray(xs).transpose(1, 0, 2)


@pytest.fixture(scope="module")
def drift_samples():
    return potline_samples(3, 2.5, (ScenarioEvent("drift", 1800.0, parameter="h_bath_ledge", factor=1.2),))[0]


@pytest.fixture(scope="module")
def offset_samples():
    return potline_samples(3, 2.0, (ScenarioEvent("offset_sensor", 1800.0, state="T_bath", offset=5.0, cells=(1,)),))


def worker_config(tmp: Path, twin: str, **kw) -> WorkerConfig:
    base = dict(
        twin=twin, historian=tmp / "store" / "historian.sqlite", model="cell",
        decisions=tmp / "decisions.jsonl", state=tmp / "worker.json", token=TOKEN, every_plant_s=1800.0,
        replay_s=1.5 * 3600, holdout_s=0.75 * 3600, horizon=120, stride=20, min_train_steps=120,
        refit=RefitConfig(lr=1e-3, epochs=10, half_life_steps=540.0), retry_initial_s=0.05, retry_max_s=0.3,
    )  # fmt: skip
    base.update(kw)
    return WorkerConfig(**base)


def ingest(twin: str, samples: list[Sample]) -> None:
    with IngestClient(twin, token=TOKEN) as c:
        ack = c.ingest(samples, batch_size=2000)
    assert ack.accepted == len(samples)


def test_genuine_improvement_is_promoted_atomically_and_recorded(tmp_path, drift_samples, twin_server):
    server, client = twin_server(store=tmp_path / "store", token=TOKEN)
    seed = load_model(DEFAULT_SEED_MODEL)
    client.register("cell", DEFAULT_SEED_MODEL, set_alias="champion")
    ingest(server.address, drift_samples)
    worker = OnlineWorker(worker_config(tmp_path, server.address))
    assert worker.due()
    # a client predicting all along: every response names its version, and the switch is atomic
    x0 = np.asarray(drift_samples[-3].x)[None]
    u = np.tile(np.asarray(drift_samples[-3].u), (1, 30, 1))
    seen: list[tuple[int, np.ndarray]] = []
    stop = threading.Event()

    def predict() -> None:
        while not stop.is_set():
            p = client.predict("cell", x0, u)
            seen.append((p.model.version, p.mean))

    thread = threading.Thread(target=predict)
    thread.start()
    try:
        record = worker.run_cycle()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert record.event == "promoted", record.reason
    assert record.challenger_version == 2 and record.champion_version == 1
    assert client.get_model("cell", alias="champion").model.version == 2
    versions = [v for v, _ in seen]
    assert versions[0] == 1 and versions[-1] == 2
    assert versions == sorted(versions)  # never back to the old champion once the new one answered
    models = {1: seed.surrogate, 2: client.export("cell", version=2).load().surrogate}
    for v in (1, 2):
        mean = next(m for vv, m in seen if vv == v)
        # the twin's engine against this process's: the same kernel where both build it, but a different one
        # (C vs numpy) where only one does; SIMD exp/pow differ in the last bit between CPUs, hence a tolerance
        np.testing.assert_allclose(mean, make_rollout_engine(models[v]).simulate(x0, u).mean(axis=0), rtol=1e-9)
    # the decision, with its figures, in the log and in the registry
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["event"] == "promoted" and doc["challenger_version"] == 2
    d = doc["decision"]
    assert d["champion"]["an_rfmse_mean"] > d["challenger"]["an_rfmse_mean"] > 0
    assert d["ratio"] <= 0.9 and doc["refit"]["seconds"] < 30
    info = client.explain("cell", version=2)
    assert info.metrics["online_decision"] == "promoted"
    assert info.metrics["online_1h_an_rfmse"] == pytest.approx(d["challenger"]["an_rfmse_mean"])
    assert info.provenance["online"]["parent"]["version"] == 1
    assert info.provenance["origin"]["dataset"] == "aprbs, train split"
    assert "PROMOTED" in client.list_models()[0][0].versions[2][2]
    state = json.loads((tmp_path / "worker.json").read_text())
    assert state["cycles"] == 1 and state["count_at_last"] == len(drift_samples)
    assert not worker.due()  # nothing new since
    worker.close()


def test_poisoned_challenger_is_rejected_and_the_champion_keeps_serving(tmp_path, offset_samples, twin_server):
    """Cell 1's bath temperature sensor reads 5 degC high from 0.5 h. The champion is the seed model adapted to
    the healthy first 0.5 h; a worker that trusts the data (no screen) fits a challenger to all cells: the gate
    rejects it (it got worse on the healthy cells), the alias stays, and the rejected challenger is visible.
    With the screen on, the offset is found and latched and cell 1 is left out."""
    samples, _ = offset_samples
    seed = load_model(DEFAULT_SEED_MODEL)
    segs = []
    for c in range(3):
        own = [s for s in samples if s.cell == c and s.step < 175]
        w = SimpleNamespace(cell=c, steps=np.array([s.step for s in own]), time_s=None,
                            x=np.array([s.x for s in own]), u=np.array([s.u for s in own]))  # fmt: skip
        segs += segments_from_window(w)
    adapted = refit(seed, segs, RefitConfig(lr=1e-3, epochs=15)).surrogate
    save_model(tmp_path / "adapted", adapted, kind=seed.kind, provenance=seed.provenance)
    server, client = twin_server(store=tmp_path / "store", token=TOKEN)
    client.register("cell", tmp_path / "adapted", set_alias="champion")
    ingest(server.address, samples)
    worker = OnlineWorker(worker_config(tmp_path, server.address, screen=None))
    record = worker.run_cycle()
    assert record.event == "rejected", record.reason
    assert record.decision is not None and not record.decision.promote
    assert client.get_model("cell", alias="champion").model.version == 1
    x0 = np.asarray(samples[0].x)[None]
    u = np.tile(np.asarray(samples[0].u), (1, 10, 1))
    assert client.predict("cell", x0, u).model.version == 1
    # visible: registered without an alias, with the verdict in its description and metrics
    models, _ = client.list_models()
    (m,) = models
    assert m.aliases == {"champion": 1}
    assert "REJECTED" in m.versions[2][2]
    assert client.explain("cell", version=2).metrics["online_decision"] == "rejected"
    doc = json.loads((tmp_path / "decisions.jsonl").read_text().splitlines()[-1])
    assert doc["event"] == "rejected" and doc["decision"]["ratio"] is not None
    worker.close()
    # with the screen on, the offset is found and latched, and the poisoned data stays out
    cfg = worker_config(
        tmp_path / "s", server.address, screen=ScreenConfig(), historian=tmp_path / "store" / "historian.sqlite"
    )
    screened = OnlineWorker(cfg)
    rec = screened.run_cycle()
    assert [(f["cell"], f["kind"], f["state"], f["step"]) for f in rec.faults] == [(1, "level_shift", "T_bath", 180)]
    assert set(json.loads((tmp_path / "s" / "worker.json").read_text())["latched"]) == {"1"}
    assert rec.refit is not None and rec.refit.data["steps"]["1"][1] < 180  # nothing of cell 1 after its fault
    assert rec.refit.data["steps"]["0"][1] > 180
    screened.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_survives_the_twin_restarting(tmp_path, drift_samples, twin_server):
    port = _free_port()
    twin = f"127.0.0.1:{port}"
    server, client = twin_server(store=tmp_path / "store", port=port)  # the address the worker knows
    client.register("cell", DEFAULT_SEED_MODEL, set_alias="champion")
    ingest(twin, drift_samples)
    server.stop(0)  # the twin goes away before the worker's first call
    worker = OnlineWorker(worker_config(tmp_path, twin, gate=Gate(margin=1.0, cell_tolerance=100.0)))
    records = []
    thread = threading.Thread(target=lambda: records.append(worker.run_cycle()))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not records  # retrying
    server, _ = twin_server(store=tmp_path / "store", port=port)  # back on the same address
    try:
        thread.join(timeout=120)
        assert records and records[0].challenger_version == 2
        assert records[0].event == "promoted"
        with TwinClient(twin) as client:
            assert client.get_model("cell", alias="champion").model.version == 2
        # a worker restarted from its state file goes on counting
        worker.close()
        again = OnlineWorker(worker_config(tmp_path, twin))
        assert again.state["cycles"] == 1 and not again.due()
        again.close()
    finally:
        server.stop(0)


def test_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="every_samples or every_plant_s"):
        worker_config(tmp_path, "127.0.0.1:1", every_plant_s=None)
    with pytest.raises(ValueError, match="horizon"):
        worker_config(tmp_path, "127.0.0.1:1", horizon=0)
    with pytest.raises(ValueError, match=r"WorkerConfig\.replay_s must be > 0, got 0"):
        worker_config(tmp_path, "127.0.0.1:1", replay_s=0)
    with pytest.raises(ValueError, match=r"WorkerConfig\.every_plant_s must be a finite number, got nan"):
        worker_config(tmp_path, "127.0.0.1:1", every_plant_s=float("nan"))
    with pytest.raises(ValueError, match=r"WorkerConfig\.poll_s must be a finite number, got True"):
        worker_config(tmp_path, "127.0.0.1:1", poll_s=True)
    rc = alutwin(["identify", "--twin", "127.0.0.1:1", "--historian", str(tmp_path / "h.sqlite"), "--model", "m"])
    assert rc == 2 and "--online" in capsys.readouterr().err


def test_state_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "sub" / "worker.json"
    assert load_state(path) == fresh_state() == load_state(None)  # nothing yet: a fresh state
    state = {**fresh_state(), "cycles": 3, "latched": {"1": {"step": 180}}}
    save_state(path, state)
    assert load_state(path) == state
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"worker state .* is unreadable"):
        load_state(path)
    path.write_text(json.dumps({"cycles": 1}))
    with pytest.raises(ValueError, match="must hold exactly the keys"):
        load_state(path)


def test_online_demo_runs_shrunk(tmp_path):
    out = tmp_path / "demo"
    rc = demo_main(
        ["--hours", "1.5", "--drift-hours", "0.75", "--horizon-min", "10", "--every-hours", "0.5",
         "--replay-hours", "0.5", "--holdout-hours", "0.25", "--epochs", "2", "--cells", "2",
         "--curve-every-min", "10", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cycles"] >= 2 and (out / "online_demo.png").stat().st_size > 10_000
    assert len(summary["curve"]["twin"]) == len(summary["curve"]["t_h"]) > 0
    assert "acceptance" in summary and (out / "README.md").is_file()
