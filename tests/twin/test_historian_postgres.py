"""The PostgreSQL historian beyond the shared historian tests (``test_historian.py`` runs those on both stores):
persistence across reopen, foreign schema versions, passwords kept out of URLs and messages, two writers
serialised by the server, the twin's config, and the twin's Ingest end to end on a real PostgreSQL server."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from alutwin.cli import main as alutwin_main
from plant import constant, sample_initial_states, simulate
from twin.config import TwinConfig
from twin.historian import (
    HistorianClosed,
    HistorianError,
    IngestClient,
    PostgresHistorian,
    QuarantineReason,
    Sample,
    is_postgres_url,
    open_historian,
)
from twin.online import OnlineWorker, WorkerConfig

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def traj() -> tuple[np.ndarray, np.ndarray]:
    """Simulated states (2, 31, 8) and inputs (2, 30, 5) of two cells: realistic, in-bounds samples."""
    data = simulate(sample_initial_states(np.random.default_rng(5), 2), constant(2, 30), engine="numpy")
    return data.x, data.u


def samples_of(traj, cell: int, steps) -> list[Sample]:
    x, u = traj
    return [Sample(cell, k, 10.0 * k, x[cell, k], u[cell, max(k - 1, 0)]) for k in steps]


def test_persists_across_reopen_and_refuses_another_schema(postgres_url, traj):
    assert is_postgres_url(postgres_url) and not is_postgres_url("data/h.sqlite")
    with open_historian(postgres_url) as h:
        assert isinstance(h, PostgresHistorian) and h.backend == "postgres"
        h.append(samples_of(traj, 1, range(5)))
        h.append([Sample(1, 9, 90.0, np.full(8, np.nan), traj[1][1, 0])])
    with open_historian(postgres_url) as h:
        assert h.count(1) == 5 and h.quarantine_counts()[QuarantineReason.NON_FINITE] == 1
        np.testing.assert_array_equal(h.window(1).x, traj[0][1, :5])
    with pytest.raises(HistorianClosed, match="closed"):
        h.count()
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(HistorianError, match="schema version 99"):
        open_historian(postgres_url)


def test_urls_and_passwords_are_checked(postgres_server, tmp_path):
    with pytest.raises(ValueError, match="must not hold a password"):
        PostgresHistorian("postgresql://alice:s3cret@localhost/x")
    with pytest.raises(ValueError, match="url must be a postgresql:// URL"):
        PostgresHistorian("mysql://localhost/x")
    with pytest.raises(ValueError, match="password is for a postgresql:// historian"):
        open_historian(tmp_path / "h.sqlite", password="pw")
    with pytest.raises(HistorianError, match="cannot open the historian") as err:
        PostgresHistorian(postgres_server.replace("/postgres?", "/no_such_db?"), password="s3cret", connect_timeout_s=5)
    assert "s3cret" not in str(err.value)


def test_two_writers_are_serialised_by_the_server(postgres_url, traj):
    x, u = traj
    a, b = open_historian(postgres_url), open_historian(postgres_url)  # two connections: two replicas
    results = {}

    def write(name, h) -> None:  # both send the same steps of cell 0: each step is stored exactly once
        results[name] = [h.append([Sample(0, k, 10.0 * k, x[0, k], u[0, k])]) for k in range(30)]

    threads = [threading.Thread(target=write, args=(n, h)) for n, h in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        accepted = sum(r.accepted for rs in results.values() for r in rs)
        dup = sum(len(r.quarantined) for rs in results.values() for r in rs)
        assert (accepted, dup) == (30, 30) and a.count(0) == 30 and b.last_step(0) == 29
        np.testing.assert_array_equal(b.window(0).x, x[0, :30])
        assert a.quarantine_counts()[QuarantineReason.DUPLICATE] == 30  # the stored steps are always a prefix
    finally:
        a.close()
        b.close()


def test_the_twin_config_names_a_database_and_a_password_variable(tmp_path, monkeypatch):
    url = "postgresql://twin@db.plant.local:5432/historian"
    cfg = TwinConfig(store=tmp_path, port=0, historian={"url": url, "password_env": "ALUTWIN_HISTORIAN_PW"})
    assert cfg.historian_target == url and cfg.historian_path is None
    with pytest.raises(ValueError, match=r"\$ALUTWIN_HISTORIAN_PW, which is not set"):
        cfg.historian.password()
    monkeypatch.setenv("ALUTWIN_HISTORIAN_PW", "pw")
    assert cfg.historian.password() == "pw"
    assert TwinConfig(store=tmp_path, port=0).historian_target == tmp_path / "historian.sqlite"
    for bad, words in (
        ({"url": "postgresql://twin:pw@db/h"}, "must not hold a password"),
        ({"url": url, "path": "h.sqlite"}, "not both"),
        ({"password_env": "PW"}, "needs historian.url"),
        ({"url": "mysql://db/h"}, "pattern"),
    ):
        with pytest.raises(ValueError, match=words):
            TwinConfig(store=tmp_path, port=0, historian=bad)


def test_the_twins_ingest_writes_to_postgresql(twin_server, postgres_url, traj):
    twin, _ = twin_server(token=TOKEN, historian={"url": postgres_url})
    assert twin.ingest is not None and twin.ingest.historian.backend == "postgres"
    bad = Sample(1, 3, 30.0, np.full(8, np.nan), traj[1][1, 0])
    with IngestClient(twin.address, token=TOKEN, timeout=10.0) as client:
        with client.stream() as stream:
            a1 = stream.send([*samples_of(traj, 0, range(10)), bad])
            a2 = stream.send(samples_of(traj, 0, [9, 10]) + samples_of(traj, 1, range(4)))
        assert (a1.accepted, a1.progress) == (10, {0: 9})
        assert [(q.reason, q.cell, q.step) for q in a1.quarantined] == [(QuarantineReason.NON_FINITE, 1, 3)]
        assert (a2.accepted, a2.progress) == (5, {0: 10, 1: 3})
        assert a2.quarantined[0].reason is QuarantineReason.DUPLICATE
        info = client.info([0, 1])
        assert info.backend == "postgres" and info.last_step(0) == 10 and info.last_step(1) == 3
        assert [q.reason for q in client.quarantine()] == [QuarantineReason.NON_FINITE, QuarantineReason.DUPLICATE]
    with open_historian(postgres_url) as h:  # another process's view: what was acknowledged is in the database
        assert (h.count(0), h.count(1)) == (11, 4)
        np.testing.assert_array_equal(h.window(0).x, traj[0][0, :11])


def test_the_worker_reads_the_historian_from_postgresql(postgres_url, traj, tmp_path, monkeypatch, capsys):
    config = WorkerConfig(
        twin="127.0.0.1:1", historian=postgres_url, model="cell", decisions=tmp_path / "d.jsonl", every_samples=5
    )
    assert config.historian == postgres_url  # a URL stays a URL, not a Path
    with open_historian(postgres_url) as h:
        h.append(samples_of(traj, 0, range(4)))
        with OnlineWorker(config) as worker:  # no twin is reached until a cycle runs
            assert worker.historian.backend == "postgres" and not worker.due()  # 4 < 5 new samples
            h.append(samples_of(traj, 0, range(4, 10)))
            assert worker.due() and worker.historian.window(0).x.shape == (10, 8)
    monkeypatch.setenv("ALUTWIN_TWIN_TOKEN", TOKEN)
    argv = ["identify", "--online", "--twin", "127.0.0.1:1", "--historian", postgres_url, "--model", "cell"]
    assert alutwin_main(argv) == 2
    assert "with a postgresql:// historian, give --decisions and --state" in capsys.readouterr().err
