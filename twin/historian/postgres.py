"""The historian on a PostgreSQL server (psycopg 3), for a replicated deployment; SQLite stays the default.

The layout is the SQLite one (:mod:`twin.historian.sqlite`) in PostgreSQL types: ``meta``, ``samples`` (one
``double precision`` column per state and input, primary key ``(cell, step)``), ``cells`` (one summary row per
cell) and ``quarantine`` (``x``, ``u`` as little-endian float64 ``bytea``). An append is one transaction under a
transaction-level advisory lock (so two writers never interleave their order checks) and is committed with
``synchronous_commit = on``: acknowledged samples are on the server's disk. The password never travels in the
URL: pass it apart (``password=``, read by the caller from an environment variable).

psycopg is an optional dependency (``pip install .[postgres]``); this module imports it only when a
PostgreSQL historian is opened.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeGuard, cast

import numpy as np

from plant.params import DomainLimits
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
from twin.historian.samples import DEFAULT_BOUNDS, MAX_INDEX, SampleBounds, check_sample
from twin.historian.sqlite import (
    _REASONS,
    _U_COLS,
    _VALUE_COLS,
    _X_COLS,
    SCHEMA_VERSION,
    SQLiteHistorian,
    _check_query_index,
    _check_samples,
    _quarantined,
    _window,
)

__all__ = ["PostgresHistorian", "is_postgres_url", "open_historian"]

_URL_SCHEMES = ("postgresql://", "postgres://")
_LOCK_KEY = 0x616C7574  # "alut": the advisory lock of the historian's writers

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    cell BIGINT NOT NULL,
    step BIGINT NOT NULL,
    time_s DOUBLE PRECISION NOT NULL,
    {", ".join(f"{c} DOUBLE PRECISION NOT NULL" for c in (*_X_COLS, *_U_COLS))},
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (cell, step)
);
CREATE TABLE IF NOT EXISTS cells (
    cell BIGINT PRIMARY KEY,
    n BIGINT NOT NULL,
    first_step BIGINT NOT NULL,
    last_step BIGINT NOT NULL,
    last_time_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id BIGSERIAL PRIMARY KEY,
    cell BIGINT,
    step BIGINT,
    time_s DOUBLE PRECISION,
    x BYTEA NOT NULL,
    u BYTEA NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_cell ON quarantine (cell, id);
"""


def is_postgres_url(target: object) -> TypeGuard[str]:
    """Whether ``target`` is a ``postgresql://`` (or ``postgres://``) URL rather than a file path."""
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


def _psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        raise HistorianError(
            "a PostgreSQL historian needs psycopg 3: pip install 'alutwin[postgres]' (or psycopg[binary])"
        ) from None


def _redacted(url: str) -> str:
    """``url`` without anything between ``//`` and ``@`` past the user (a password never reaches a message)."""
    head, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    return f"{head}{sep}{auth.split(':', 1)[0]}{at}{host}" if at else url


class PostgresHistorian(Historian):
    """The historian in a PostgreSQL database (its tables created if missing), one connection behind a lock.

    Parameters
    ----------
    url : str
        ``postgresql://[user@]host[:port]/dbname[?...]`` (libpq URL; ``?host=/socket/dir`` for a unix socket).
        It must not hold a password.
    password : str, optional
        The password, given apart from the URL (None: libpq's own means, e.g. ``~/.pgpass`` or trust).
    limits, bounds
        As for :class:`~twin.historian.sqlite.SQLiteHistorian`.
    connect_timeout_s : int
        Seconds to wait for the server when connecting.
    """

    backend = "postgres"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        limits: DomainLimits | None = None,
        bounds: SampleBounds | None = None,
        connect_timeout_s: int = 10,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"url must be a postgresql:// URL, got {url!r}")
        if password is not None and not isinstance(password, str):
            raise ValueError(f"password must be a string or None, got {type(password).__name__}")
        if limits is not None and not isinstance(limits, DomainLimits):
            raise ValueError(f"limits must be a plant.params.DomainLimits, got {type(limits).__name__}")
        bounds = DEFAULT_BOUNDS if bounds is None else bounds
        if not isinstance(bounds, SampleBounds):
            raise ValueError(f"bounds must be a SampleBounds, got {type(bounds).__name__}")
        psycopg = _psycopg()
        self.url = _redacted(url)
        try:
            if "password" in psycopg.conninfo.conninfo_to_dict(url):
                raise ValueError(f"url must not hold a password (give it apart), got {self.url!r}")
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"url is not a valid PostgreSQL URL ({exc}), got {self.url!r}") from None
        self.bounds = bounds if limits is None else dataclasses.replace(bounds, limits=limits)
        self._lock = threading.Lock()
        extra = {} if password is None else {"password": password}
        try:
            conn = psycopg.connect(url, connect_timeout=connect_timeout_s, **extra)
        except psycopg.Error as exc:
            raise HistorianError(f"cannot open the historian {self.url}: {exc}") from None
        try:
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # two openers never race the DDL
            conn.execute(_SCHEMA)  # idempotent (IF NOT EXISTS)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', %s) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),)
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row[0] != str(SCHEMA_VERSION):
                raise HistorianError(
                    f"the historian {self.url} has schema version {row[0]}; this code reads version {SCHEMA_VERSION}"
                )
            conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise HistorianError(f"{self.url} is not a usable historian database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn: Any = conn

    def _db(self) -> Any:
        if self._conn is None:
            raise HistorianClosed(f"the historian {self.url} is closed")
        return self._conn

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query, in a transaction of its own (no snapshot is held between calls)."""
        with self._lock:
            db = self._db()
            try:
                return list(db.execute(query, params).fetchall())
            finally:
                db.rollback()

    # -- writing -----------------------------------------------------------------------------------------------

    def append(self, samples: Sequence[Sample]) -> AppendResult:
        _check_samples(samples)
        now = time.time()
        checked = [(s, check_sample(s, self.bounds)) for s in samples]  # outside the lock: pure
        with self._lock:
            db = self._db()
            try:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                # duck typing: the shared code only calls execute(...).fetchone() on what it is given
                result = SQLiteHistorian._store(cast(sqlite3.Connection, _QmarkConnection(db)), checked, now)
                db.commit()
            except BaseException:
                db.rollback()
                raise
        return result

    # -- reading -----------------------------------------------------------------------------------------------

    def window(self, cell: int, start_step: int | None = None, end_step: int | None = None) -> Window:
        c = _check_query_index("cell", cell)
        start = _check_query_index("start_step", start_step, optional=True)
        end = _check_query_index("end_step", end_step, optional=True)
        lo = 0 if start is None else start
        hi = MAX_INDEX + 1 if end is None else end
        rows = self._read(
            f"SELECT step, time_s, {_VALUE_COLS} FROM samples WHERE cell = %s AND step >= %s AND step < %s "
            "ORDER BY step",
            (c, lo, hi),
        )
        return _window(c, rows)

    def count(self, cell: int | None = None) -> int:
        if cell is None:
            rows = self._read("SELECT COALESCE(SUM(n), 0) FROM cells")
        else:
            rows = self._read(
                "SELECT COALESCE(SUM(n), 0) FROM cells WHERE cell = %s", (_check_query_index("cell", cell),)
            )
        return int(rows[0][0])

    def last_step(self, cell: int) -> int | None:
        rows = self._read("SELECT last_step FROM cells WHERE cell = %s", (_check_query_index("cell", cell),))
        return int(rows[0][0]) if rows else None

    def cells(self) -> list[int]:
        return [int(r[0]) for r in self._read("SELECT cell FROM cells ORDER BY cell")]

    def summary(self) -> list[tuple[int, int, int, int, float]]:
        rows = self._read("SELECT cell, n, first_step, last_step, last_time_s FROM cells ORDER BY cell")
        return [(int(a), int(b), int(c), int(d), float(e)) for a, b, c, d, e in rows]

    def quarantine(self, cell: int | None = None, limit: int = 1000) -> list[Quarantined]:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        query = "SELECT cell, step, time_s, x, u, reason, detail, received_at FROM quarantine"
        if cell is None:
            rows = self._read(f"{query} ORDER BY id DESC LIMIT %s", (int(limit),))
        else:
            c = _check_query_index("cell", cell)
            rows = self._read(f"{query} WHERE cell = %s ORDER BY id DESC LIMIT %s", (c, int(limit)))
        return [_quarantined(r) for r in reversed(rows)]

    def quarantine_counts(self) -> dict[QuarantineReason, int]:
        counts = dict.fromkeys(QuarantineReason, 0)
        for reason, n in self._read("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"):
            if reason in _REASONS:
                counts[_REASONS[reason]] = int(n)
        return counts

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PostgresHistorian({self.url!r})"


class _QmarkConnection:
    """A psycopg connection that takes SQLite's ``?`` placeholders: both backends share the storing code."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(query.replace("?", "%s"), params)


def open_historian(
    target: str | os.PathLike[str],
    *,
    password: str | None = None,
    limits: DomainLimits | None = None,
    bounds: SampleBounds | None = None,
) -> Historian:
    """The historian at ``target``: a ``postgresql://`` URL (:class:`PostgresHistorian`) or an SQLite file
    (:class:`~twin.historian.sqlite.SQLiteHistorian`, created if missing).

    Parameters
    ----------
    target : str or PathLike
        A PostgreSQL URL without a password, or the SQLite file's path.
    password : str, optional
        The PostgreSQL password (refused with an SQLite file).
    limits, bounds
        As for :class:`~twin.historian.sqlite.SQLiteHistorian`.
    """
    if is_postgres_url(target):
        return PostgresHistorian(target, password=password, limits=limits, bounds=bounds)
    if password is not None:
        raise ValueError(f"password is for a postgresql:// historian, not the SQLite file {os.fspath(target)!r}")
    return SQLiteHistorian(target, limits=limits, bounds=bounds)
