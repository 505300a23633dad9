"""The historian in one SQLite file: WAL mode with ``synchronous=FULL``, one connection guarded by a lock.

Layout::

    meta(key, value)                       schema version
    samples(cell, step, time_s, x_<state>..., u_<input>..., received_at)   primary key (cell, step)
    cells(cell, n, first_step, last_step, last_time_s)                     one summary row per cell
    quarantine(id, cell, step, time_s, x, u, reason, detail, received_at)  x, u as little-endian float64 bytes
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from plant.params import DomainLimits
from plant.signals import INPUT_NAMES, N_INPUTS, N_STATES, STATE_NAMES
from twin.historian.historian import (
    AppendResult,
    Historian,
    HistorianClosed,
    HistorianError,
    Quarantined,
    QuarantineReason,
    Sample,
    Window,
)
from twin.historian.samples import DEFAULT_BOUNDS, MAX_INDEX, SampleBounds, as_index, as_time, as_vector, check_sample

__all__ = ["SCHEMA_VERSION", "SQLiteHistorian", "open_historian"]

SCHEMA_VERSION = 1
"""Version of the SQLite layout; a file of another version is refused."""

_MAX_KEPT_VALUES = 64  # values of a wrongly shaped vector kept in the quarantine (its length is in the detail)


_X_COLS = tuple(f"x_{n}" for n in STATE_NAMES)
_U_COLS = tuple(f"u_{n}" for n in INPUT_NAMES)
_VALUE_COLS = ", ".join((*_X_COLS, *_U_COLS))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    cell INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time_s REAL NOT NULL,
    {", ".join(f"{c} REAL NOT NULL" for c in (*_X_COLS, *_U_COLS))},
    received_at REAL NOT NULL,
    PRIMARY KEY (cell, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cells (
    cell INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    last_time_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cell INTEGER,
    step INTEGER,
    time_s REAL,
    x BLOB NOT NULL,
    u BLOB NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_cell ON quarantine (cell, id);
"""

_REASONS = {r.value: r for r in QuarantineReason}


def _blob(arr: np.ndarray | None) -> bytes:
    if arr is None:
        return b""
    return np.ascontiguousarray(arr.reshape(-1)[:_MAX_KEPT_VALUES], dtype="<f8").tobytes()


def _from_blob(data: bytes) -> np.ndarray:
    arr = np.frombuffer(data, dtype="<f8").astype(np.float64)
    arr.flags.writeable = False
    return arr


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _check_samples(samples: Any) -> None:
    """Refuse what is not a sequence of :class:`Sample` (shared by the SQLite and PostgreSQL historians)."""
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise ValueError(f"samples must be a sequence of Sample, got {type(samples).__name__}")
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise ValueError(f"samples[{i}] must be a Sample, got {type(s).__name__}")


def _window(cell: int, rows: Sequence[Sequence[Any]]) -> Window:
    """The window of ``cell`` from rows ``(step, time_s, x..., u...)`` in step order."""
    data = np.array(rows, dtype=np.float64).reshape(len(rows), 2 + N_STATES + N_INPUTS)  # (n, 15)
    steps = np.array([r[0] for r in rows], dtype=np.int64)  # exact, not through float64
    return Window(
        cell=int(cell),
        steps=_frozen(steps),
        time_s=_frozen(data[:, 1].copy()),
        x=_frozen(data[:, 2 : 2 + N_STATES].copy()),
        u=_frozen(data[:, 2 + N_STATES :].copy()),
    )


def _quarantined(r: Sequence[Any]) -> Quarantined:
    """A stored quarantine row ``(cell, step, time_s, x, u, reason, detail, received_at)``."""
    return Quarantined(
        cell=None if r[0] is None else int(r[0]),
        step=None if r[1] is None else int(r[1]),
        time_s=math.nan if r[2] is None else float(r[2]),
        x=_from_blob(bytes(r[3])),
        u=_from_blob(bytes(r[4])),
        reason=_REASONS[r[5]],
        detail=r[6],
        received_at=float(r[7]),
    )


@overload
def _check_query_index(name: str, value: Any, optional: Literal[False] = False) -> int: ...


@overload
def _check_query_index(name: str, value: Any, optional: bool) -> int | None: ...


def _check_query_index(name: str, value: Any, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer{' or None' if optional else ''}, got {value!r}")
    return min(int(value), MAX_INDEX + 1)


class SQLiteHistorian(Historian):
    """The historian in one SQLite file (WAL, ``synchronous=FULL``), created if missing.

    Parameters
    ----------
    path : str or PathLike
        The database file; its directory is created if missing.
    limits : DomainLimits, optional
        The plant's valid domain an accepted state lies in (default :data:`plant.params.DEFAULT_LIMITS`).
    bounds : SampleBounds, optional
        Physical bounds of the states and inputs (default :data:`DEFAULT_BOUNDS`); ``limits`` replaces its
        ``limits`` when both are given.
    busy_timeout_s : float
        How long a write waits for another process's write lock before failing.

    Notes
    -----
    One connection guarded by a lock serves every thread; other processes read the file concurrently (WAL).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limits: DomainLimits | None = None,
        bounds: SampleBounds | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"path must be a file path, got {path!r}")
        if limits is not None and not isinstance(limits, DomainLimits):
            raise ValueError(f"limits must be a plant.params.DomainLimits, got {type(limits).__name__}")
        bounds = DEFAULT_BOUNDS if bounds is None else bounds
        if not isinstance(bounds, SampleBounds):
            raise ValueError(f"bounds must be a SampleBounds, got {type(bounds).__name__}")
        self.bounds = bounds if limits is None else dataclasses.replace(bounds, limits=limits)
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise HistorianError(f"cannot open the historian {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistorianError(f"the historian {self.path} cannot use WAL mode (got journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row[0] != str(SCHEMA_VERSION):
                raise HistorianError(
                    f"the historian {self.path} has schema version {row[0]}; this code reads version {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise HistorianError(f"{self.path} is not a usable historian database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._writer_fd = -1

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistorianClosed(f"the historian {self.path} is closed")
        return self._conn

    # -- writing -----------------------------------------------------------------------------------------------

    def append(self, samples: Sequence[Sample]) -> AppendResult:
        _check_samples(samples)
        now = time.time()
        checked = [(s, check_sample(s, self.bounds)) for s in samples]  # outside the lock: pure
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = self._store(db, checked, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    @staticmethod
    def _store(
        db: sqlite3.Connection, checked: Sequence[tuple[Sample, tuple[QuarantineReason, str] | None]], now: float
    ) -> AppendResult:
        """Store or quarantine each checked sample inside the caller's transaction (the PostgreSQL historian
        calls it too, through a connection that takes ``?`` placeholders)."""
        quarantined: list[Quarantined] = []
        accepted = 0
        last: dict[int, tuple[int, float] | None] = {}
        for i, (s, bad) in enumerate(checked):
            if bad is None:
                bad = SQLiteHistorian._check_order(db, s, last)
            if bad is not None:
                quarantined.append(SQLiteHistorian._quarantine(db, s, bad, now, i))
                continue
            cell, step, t = int(s.cell), int(s.step), float(s.time_s)
            x = np.asarray(s.x, dtype=np.float64).reshape(-1)
            u = np.asarray(s.u, dtype=np.float64).reshape(-1)
            db.execute(
                f"INSERT INTO samples (cell, step, time_s, {_VALUE_COLS}, received_at) "
                f"VALUES ({', '.join('?' * (N_STATES + N_INPUTS + 4))})",
                (cell, step, t, *x.tolist(), *u.tolist(), now),
            )
            db.execute(
                "INSERT INTO cells (cell, n, first_step, last_step, last_time_s) VALUES (?, 1, ?, ?, ?) "
                "ON CONFLICT (cell) DO UPDATE SET n = cells.n + 1, last_step = excluded.last_step, "
                "last_time_s = excluded.last_time_s",
                (cell, step, step, t),
            )
            last[cell] = (step, t)
            accepted += 1
        return AppendResult(accepted, tuple(quarantined))

    @staticmethod
    def _check_order(
        db: sqlite3.Connection, s: Sample, last: dict[int, tuple[int, float] | None]
    ) -> tuple[QuarantineReason, str] | None:
        cell, step, t = int(s.cell), int(s.step), float(s.time_s)
        if cell not in last:
            row = db.execute("SELECT last_step, last_time_s FROM cells WHERE cell = ?", (cell,)).fetchone()
            last[cell] = None if row is None else (int(row[0]), float(row[1]))
        prev = last[cell]
        if prev is None:
            return None
        if step > prev[0]:
            if t <= prev[1]:
                return (
                    QuarantineReason.OUT_OF_ORDER,
                    f"time_s = {t!r} at step {step} is not after time_s = {prev[1]!r} of cell {cell}'s last "
                    f"accepted step {prev[0]}",
                )
            return None
        row = db.execute(
            f"SELECT time_s, {_VALUE_COLS} FROM samples WHERE cell = ? AND step = ?", (cell, step)
        ).fetchone()
        if row is None:
            return (
                QuarantineReason.OUT_OF_ORDER,
                f"step {step} of cell {cell} is not after its last accepted step {prev[0]}",
            )
        stored = np.array(row[1:], dtype=np.float64)
        sent = np.concatenate([np.asarray(s.x, dtype=np.float64).reshape(-1), np.asarray(s.u, dtype=np.float64)])
        if row[0] == t and np.array_equal(stored, sent):
            return QuarantineReason.DUPLICATE, f"identical re-send of cell {cell}'s stored sample at step {step}"
        if row[0] != t:
            diff = f"time_s {row[0]!r} stored, {t!r} sent"
        else:
            i = int(np.flatnonzero(stored != sent)[0])
            name = f"x.{STATE_NAMES[i]}" if i < N_STATES else f"u.{INPUT_NAMES[i - N_STATES]}"
            diff = f"{name} {float(stored[i])!r} stored, {float(sent[i])!r} sent"
        return (
            QuarantineReason.DUPLICATE,
            f"conflicts with cell {cell}'s stored sample at step {step} ({diff}); the stored sample is kept",
        )

    @staticmethod
    def _quarantine(
        db: sqlite3.Connection, s: Sample, bad: tuple[QuarantineReason, str], now: float, index: int
    ) -> Quarantined:
        reason, detail = bad
        cell, step, t = as_index(s.cell), as_index(s.step), as_time(s.time_s)
        x, u = as_vector(s.x), as_vector(s.u)
        xb, ub = _blob(x), _blob(u)
        db.execute(
            "INSERT INTO quarantine (cell, step, time_s, x, u, reason, detail, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cell, step, None if math.isnan(t) else t, xb, ub, reason.value, detail, now),
        )
        return Quarantined(cell, step, t, _from_blob(xb), _from_blob(ub), reason, detail, now, index)

    # -- reading -----------------------------------------------------------------------------------------------

    def window(self, cell: int, start_step: int | None = None, end_step: int | None = None) -> Window:
        c = _check_query_index("cell", cell)
        start = _check_query_index("start_step", start_step, optional=True)
        end = _check_query_index("end_step", end_step, optional=True)
        lo = 0 if start is None else start
        hi = MAX_INDEX + 1 if end is None else end
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT step, time_s, {_VALUE_COLS} FROM samples WHERE cell = ? AND step >= ? AND step < ? "
                    "ORDER BY step",
                    (c, lo, hi),
                )
                .fetchall()
            )
        return _window(c, rows)

    def count(self, cell: int | None = None) -> int:
        with self._lock:
            db = self._db()
            if cell is None:
                row = db.execute("SELECT COALESCE(SUM(n), 0) FROM cells").fetchone()
            else:
                c = _check_query_index("cell", cell)
                row = db.execute("SELECT COALESCE(SUM(n), 0) FROM cells WHERE cell = ?", (c,)).fetchone()
        return int(row[0])

    def last_step(self, cell: int) -> int | None:
        c = _check_query_index("cell", cell)
        with self._lock:
            row = self._db().execute("SELECT last_step FROM cells WHERE cell = ?", (c,)).fetchone()
        return None if row is None else int(row[0])

    def cells(self) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._db().execute("SELECT cell FROM cells ORDER BY cell")]

    backend = "sqlite"

    def summary(self) -> list[tuple[int, int, int, int, float]]:
        with self._lock:
            rows = self._db().execute("SELECT cell, n, first_step, last_step, last_time_s FROM cells ORDER BY cell")
            return [(int(a), int(b), int(c), int(d), float(e)) for a, b, c, d, e in rows]

    def quarantine(self, cell: int | None = None, limit: int = 1000) -> list[Quarantined]:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        query = "SELECT cell, step, time_s, x, u, reason, detail, received_at FROM quarantine"
        with self._lock:
            db = self._db()
            if cell is None:
                rows = db.execute(f"{query} ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
            else:
                c = _check_query_index("cell", cell)
                rows = db.execute(f"{query} WHERE cell = ? ORDER BY id DESC LIMIT ?", (c, int(limit))).fetchall()
        return [_quarantined(r) for r in reversed(rows)]

    def quarantine_counts(self) -> dict[QuarantineReason, int]:
        counts = dict.fromkeys(QuarantineReason, 0)
        with self._lock:
            for reason, n in self._db().execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"):
                if reason in _REASONS:
                    counts[_REASONS[reason]] = int(n)
        return counts

    def claim_writer(self) -> None:
        """Hold an exclusive ``flock`` on ``<path>.lock`` until :meth:`close` (writing the holder's pid and host
        into it); HistorianError naming the holder when another process has it. SQLite alone would let two
        writers take turns; one writer keeps the ingest order and the quarantine counts of one process."""
        with self._lock:
            self._db()
            if self._writer_fd >= 0:
                return
            lock = self.path.with_name(self.path.name + ".lock")
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise HistorianError(f"cannot open the historian's lock {lock}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise HistorianError(
                    f"the historian {self.path} already has a writer ({holder}); give each twin server its own "
                    "historian.path, or turn the historian off (historian.enabled: false) on all but one"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            self._writer_fd = fd

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._writer_fd >= 0:
                os.close(self._writer_fd)  # releases the flock
                self._writer_fd = -1

    def __repr__(self) -> str:
        return f"SQLiteHistorian({os.fspath(self.path)!r})"


def open_historian(
    path: str | os.PathLike[str], *, limits: DomainLimits | None = None, bounds: SampleBounds | None = None
) -> Historian:
    """The historian at ``path``: an SQLite file (the only implementation so far), created if missing."""
    return SQLiteHistorian(path, limits=limits, bounds=bounds)
