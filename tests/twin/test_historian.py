"""The historian: exact round trip, a quarantine reason for each kind of bad sample, atomic appends, persistence,
thread safety and a concurrent reader in another process (WAL)."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from plant import constant, sample_initial_states, simulate
from plant.params import DomainLimits
from plant.signals import X
from twin.historian import (
    MAX_INDEX,
    HistorianClosed,
    HistorianError,
    QuarantineReason,
    Sample,
    SQLiteHistorian,
    check_sample,
    open_historian,
)

R = QuarantineReason


@pytest.fixture(scope="module")
def traj() -> tuple[np.ndarray, np.ndarray]:
    """Simulated states (2, 31, 8) and inputs (2, 30, 5) of two cells: realistic, in-bounds samples."""
    rng = np.random.default_rng(11)
    data = simulate(sample_initial_states(rng, 2), constant(2, 30), engine="numpy")
    return data.x, data.u


def samples_of(traj, cell: int, steps) -> list[Sample]:
    x, u = traj
    return [Sample(cell, k, 10.0 * k, x[cell, k], u[cell, max(k - 1, 0)]) for k in steps]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path: Path) -> str | Path:
    """Where a fresh historian lives: an SQLite file, or an empty database on the tests' PostgreSQL server."""
    return tmp_path / "h.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def hist(target):
    h = open_historian(target)
    yield h
    h.close()


def test_round_trip_is_exact_and_windows_are_half_open(hist, traj):
    r = hist.append(samples_of(traj, 0, range(31)) + samples_of(traj, 1, range(0, 31, 3)))
    assert (r.accepted, r.quarantined) == (31 + 11, ())
    w = hist.window(0)
    np.testing.assert_array_equal(w.steps, np.arange(31))
    np.testing.assert_array_equal(w.x, traj[0][0])
    np.testing.assert_array_equal(w.u[1:], traj[1][0])
    np.testing.assert_array_equal(w.time_s, 10.0 * np.arange(31))
    assert w.steps.dtype == np.int64 and not w.x.flags.writeable
    part = hist.window(1, 3, 12)  # [3, 12)
    np.testing.assert_array_equal(part.steps, [3, 6, 9])
    assert part.x.shape == (3, 8) and part.u.shape == (3, 5)
    assert len(hist.window(7)) == 0 and hist.window(7).x.shape == (0, 8)
    assert (hist.count(), hist.count(0), hist.count(1), hist.count(5)) == (42, 31, 11, 0)
    assert (hist.last_step(0), hist.last_step(1), hist.last_step(5)) == (30, 30, None)
    assert hist.cells() == [0, 1]
    assert hist.summary() == [(0, 31, 0, 30, 300.0), (1, 11, 0, 30, 300.0)]


def _bad_cases(traj):
    x, u = traj[0][0, 5].copy(), traj[1][0, 4].copy()

    def with_x(i, v):
        y = x.copy()
        y[i] = v
        return y

    def with_u(i, v):
        w = u.copy()
        w[i] = v
        return w

    bath = x[1] + x[2] + x[3]
    return [
        (Sample(0, 20, 200.0, with_x(X.T_BATH, np.nan), u), R.NON_FINITE, "T_bath = nan"),
        (Sample(0, 20, 200.0, x, with_u(1, np.inf)), R.NON_FINITE, "current = inf"),
        (Sample(0, 20, float("nan"), x, u), R.NON_FINITE, "time_s"),
        (Sample(0, 20, 200.0, with_x(X.T_BATH, 1500.0), u), R.OUT_OF_BOUNDS, "T_bath = 1500"),
        (Sample(0, 20, 200.0, x, with_u(4, 0.2)), R.OUT_OF_BOUNDS, "acd = 0.2"),
        (Sample(0, 20, 200.0, with_x(X.M_LEDGE, 300.0), u), R.OUT_OF_BOUNDS, "side ledge below 500 kg"),
        (Sample(0, 20, 200.0, with_x(X.M_AL2O3, 0.12 * bath), u), R.OUT_OF_BOUNDS, "alumina outside 1-8 %"),
        (Sample(0, 20, -5.0, x, u), R.OUT_OF_BOUNDS, "negative"),
        (Sample(0, 20, 200.0, x[:7], u), R.BAD_SHAPE, "x must hold 8 numbers"),
        (Sample(0, 20, 200.0, x, np.stack([u, u])), R.BAD_SHAPE, "u must hold 5 numbers"),
        (Sample(0, 20, 200.0, "hot", u), R.BAD_SHAPE, "not an array of numbers"),
        (Sample(-1, 20, 200.0, x, u), R.BAD_INDEX, "cell = -1"),
        (Sample(0, MAX_INDEX + 1, 200.0, x, u), R.BAD_INDEX, "step ="),
        (Sample(0, 2.5, 200.0, x, u), R.BAD_INDEX, "step = 2.5"),
    ]


def test_each_kind_of_bad_value_gets_its_reason(hist, traj):
    hist.append(samples_of(traj, 0, range(10)))
    cases = _bad_cases(traj)
    r = hist.append([s for s, _, _ in cases])
    assert r.accepted == 0 and len(r.quarantined) == len(cases)  # nothing silently dropped
    for (sample, reason, words), q in zip(cases, r.quarantined, strict=True):
        assert q.reason is reason, (q.detail, reason)
        assert words in q.detail, q.detail
        assert check_sample(sample) is not None or reason in (R.OUT_OF_ORDER, R.DUPLICATE)
    assert [q.index for q in r.quarantined] == list(range(len(cases)))
    stored = hist.quarantine()
    assert [(q.reason, q.detail) for q in stored] == [(q.reason, q.detail) for q in r.quarantined]
    assert stored[0].cell == 0 and stored[0].step == 20 and np.isnan(stored[0].x[X.T_BATH])
    assert stored[8].x.shape == (7,)  # what was sent, as sent
    assert stored[11].cell is None  # an invalid cell is not made up
    counts = hist.quarantine_counts()
    assert set(counts) == set(R) and counts[R.OUT_OF_BOUNDS] == 5 and counts[R.DUPLICATE] == 0
    assert hist.count() == 10


def test_order_and_duplicates(hist, traj):
    hist.append(samples_of(traj, 0, [0, 1, 2, 5, 6]))
    x, u = traj
    conflicting = dataclasses.replace(samples_of(traj, 0, [5])[0], x=x[0, 5] + 0.5)
    late_time = Sample(0, 7, 55.0, x[0, 7], u[0, 6])  # step after the last, time before it
    r = hist.append(
        [
            *samples_of(traj, 0, [3]),  # before the last step, never stored
            *samples_of(traj, 0, [5]),  # identical re-send
            conflicting,
            late_time,
            *samples_of(traj, 0, [8, 8]),  # a duplicate within one batch
        ]
    )
    got = [(q.reason, q.step) for q in r.quarantined]
    assert got == [(R.OUT_OF_ORDER, 3), (R.DUPLICATE, 5), (R.DUPLICATE, 5), (R.OUT_OF_ORDER, 7), (R.DUPLICATE, 8)]
    details = [q.detail for q in r.quarantined]
    assert "not after its last accepted step 6" in details[0]
    assert "identical re-send" in details[1] and "identical re-send" in details[4]
    assert "conflicts" in details[2] and "x.m_ledge" in details[2] and "stored sample is kept" in details[2]
    assert "time_s = 55.0" in details[3]
    assert r.accepted == 1 and hist.last_step(0) == 8
    np.testing.assert_array_equal(hist.window(0, 5, 6).x[0], x[0, 5])  # the stored sample was kept
    assert [q.detail for q in hist.quarantine(cell=0, limit=2)] == details[-2:]  # the latest, oldest first


def test_an_append_is_atomic(hist, traj, monkeypatch):
    hist.append(samples_of(traj, 0, range(3)))
    calls = {"n": 0}
    original = SQLiteHistorian._check_order  # the PostgreSQL historian's order check calls this one too

    def flaky(db, s, last):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk went away")
        return original(db, s, last)

    monkeypatch.setattr(SQLiteHistorian, "_check_order", staticmethod(flaky))
    bad = _bad_cases(traj)[0][0]
    with pytest.raises(OSError):
        hist.append([*samples_of(traj, 0, range(3, 6)), bad, *samples_of(traj, 0, range(6, 9))])
    assert hist.count() == 3 and hist.last_step(0) == 2 and hist.quarantine() == []
    with pytest.raises(ValueError, match=r"samples\[1\] must be a Sample"):
        hist.append([samples_of(traj, 0, [9])[0], "nope"])
    assert hist.count() == 3


def test_persists_across_reopen_and_refuses_foreign_files(tmp_path, traj):
    path = tmp_path / "sub" / "h.sqlite"
    with open_historian(path) as h:
        h.append(samples_of(traj, 1, range(5)))
        h.append([_bad_cases(traj)[0][0]])
    with open_historian(path) as h:
        assert h.count(1) == 5 and h.quarantine_counts()[R.NON_FINITE] == 1
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    h.close()  # twice is harmless
    with pytest.raises(HistorianClosed):
        h.count()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(HistorianError, match="schema version 99"):
        open_historian(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistorianError, match="not a usable historian"):
        open_historian(junk)


def test_domain_limits_are_configurable(target, traj):
    x = traj[0]
    ledge = float(x[0, 3, X.M_LEDGE])
    with open_historian(target, limits=DomainLimits(min_ledge_mass=ledge + 1.0)) as h:
        r = h.append(samples_of(traj, 0, [3]))
        assert r.accepted == 0 and r.quarantined[0].reason is R.OUT_OF_BOUNDS
        assert "side ledge below" in r.quarantined[0].detail


def test_bad_queries_are_refused_clearly(hist):
    with pytest.raises(ValueError, match="cell must be a non-negative integer, got -1"):
        hist.window(-1)
    with pytest.raises(ValueError, match="start_step"):
        hist.window(0, start_step=1.5)
    with pytest.raises(ValueError, match="limit"):
        hist.quarantine(limit=-3)
    with pytest.raises(ValueError, match="samples must be a sequence"):
        hist.append(None)


def test_threads_append_concurrently(hist, traj):
    x, u = traj

    def write(cell: int) -> None:
        for k in range(0, 30, 3):
            hist.append([Sample(cell, k + j, 10.0 * (k + j), x[cell % 2, k + j], u[cell % 2, k + j]) for j in range(3)])

    threads = [threading.Thread(target=write, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hist.count() == 120 and hist.cells() == [0, 1, 2, 3]
    for c in range(4):
        np.testing.assert_array_equal(hist.window(c).x, x[c % 2, :30])


READER = """
import sys, time
from twin.historian import open_historian
h = open_historian(sys.argv[1])
seen, last = 0, -1
end = time.monotonic() + 20
while time.monotonic() < end:
    n = h.count(0)
    w = h.window(0)
    assert len(w) >= n >= last, (n, last)
    assert list(w.steps) == list(range(len(w))), "a torn read"
    last = n
    seen += 1
    if n >= int(sys.argv[2]):
        break
print(seen, last)
"""


def test_another_process_reads_while_this_one_writes(target, traj):
    x, u = traj
    h = open_historian(target)
    h.append(samples_of(traj, 0, [0]))
    total = 300
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(target), str(total)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        for k in range(1, total):
            j = k % 30
            h.append([Sample(0, k, 10.0 * k, x[0, j], u[0, j])])
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        h.close()
    assert proc.returncode == 0, err
    reads, last = map(int, out.split())
    assert last == total and reads >= 1
