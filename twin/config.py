"""Settings of the twin service: one typed, frozen dataclass that a YAML file fills (``deploy/twin.yaml``).

Only ``store`` and ``port`` are required; every other setting has an embedded default (a local directory model
store, loopback, no TLS, no metrics endpoint, management off until a token is configured). Relative paths in a
YAML file are relative to the file's own directory. The file's JSON schema is ``deploy/schemas/twin.schema.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from alutwin.config import (
    Config,
    ConfigPath,
    EnvName,
    Flag,
    Host,
    NonNegativeInt,
    NonNegativeNumber,
    OneOf,
    Port,
    PositiveInt,
    PositiveNumber,
    Token,
    config_dataclass,
)
from alutwin.security import ServerSecurity
from identification.rollout import ENGINES

__all__ = ["DEFAULT_PORT", "HISTORIAN_FILE", "HistorianConfig", "TwinConfig"]

DEFAULT_PORT = 50061
"""Port of ``alutwin twin serve`` without a config (the plant service uses 50051)."""

HISTORIAN_FILE = "historian.sqlite"
"""Name of the historian's file in the model store directory when ``historian.path`` is not given."""


@config_dataclass
class HistorianConfig(Config):
    """The ``historian`` section of :class:`TwinConfig`: where measurements are kept and what Ingest accepts.

    On by default: ingest needs the management token anyway, and a historian that is always there lets the online
    re-fit and the operators' tools count on it; ``enabled: false`` turns the IngestService off.

    Parameters
    ----------
    enabled : bool
        Serve ``alutwin.v1.IngestService`` over a historian.
    path : Path, optional
        The SQLite file; default ``<store>/historian.sqlite``. One twin server writes it (it holds
        ``<path>.lock``); a second one configured with the same file stops at start with one line saying so, so
        replicas on one store need their own files or ``enabled: false`` on all but one.
    url : str, optional
        A PostgreSQL database instead of the SQLite file (``postgresql://user@host:5432/dbname``, a libpq URL
        without a password), for replicas: every replica may write, the server serialises the appends. Needs
        ``pip install .[postgres]``. Exclusive with ``path``.
    password_env : str, optional
        The environment variable holding the PostgreSQL password (only with ``url``; never in the file).
    max_batch_samples : int
        Largest batch of one Ingest request (at most 1 000 000).
    max_ingest_streams : int
        Ingest streams open at once (each holds a gRPC thread); more get RESOURCE_EXHAUSTED.
    max_quarantine_list : int
        Largest ``limit`` of ListQuarantine.
    """

    enabled: Flag = True
    path: ConfigPath | None = None
    url: Annotated[str, Field(pattern=r"^postgres(ql)?://\S*$")] | None = None
    password_env: EnvName | None = None
    max_batch_samples: Annotated[PositiveInt, Field(le=1_000_000)] = 10_000
    max_ingest_streams: PositiveInt = 4
    max_quarantine_list: PositiveInt = 10_000

    @model_validator(mode="after")
    def _check_store(self) -> HistorianConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("give historian.path (SQLite) or historian.url (PostgreSQL), not both")
        if self.password_env is not None and self.url is None:
            raise ValueError("historian.password_env names the PostgreSQL password's variable: it needs historian.url")
        if self.url is not None and ":" in self.url.split("://", 1)[1].rpartition("@")[0]:
            raise ValueError("historian.url must not hold a password: put it in the variable named by password_env")
        return self

    def password(self) -> str | None:
        """The PostgreSQL password, from the variable ``password_env``; None when ``password_env`` is not set.

        Raises
        ------
        ValueError
            ``password_env`` names a variable that is not set.
        """
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ValueError(f"historian.password_env names ${self.password_env}, which is not set")
        return value


@config_dataclass
class TwinConfig(Config, ServerSecurity):
    """Settings of a twin server.

    Parameters
    ----------
    store : Path
        Directory of the model store (created if missing). Several twin servers (replicas) may share one store:
        their changes are serialised by the store's file lock.
    store_poll_s : float
        Seconds between two looks at the store for changes made by other replicas (at most 60): a version
        registered or an alias moved through one replica is served by every other within ``store_poll_s`` plus
        the time to load that version. The look is one ``stat`` of ``registry.json`` while nothing changes.
    port : int
        TCP port; 0 picks a free one.
    host : str
        Address to bind; loopback by default. Bind another address only with TLS and a token.
    max_workers : int
        gRPC threads; each open Watch or Ingest stream holds one.
    rollout_threads : int
        Threads that run rollouts (a bounded pool beside the gRPC threads).
    max_concurrent_predictions : int
        Predict calls running or queued at once; more get RESOURCE_EXHAUSTED.
    max_batch, max_horizon : int
        Largest B (scenarios) and H (steps) of one Predict.
    max_work : int
        Largest B * H * M (M = ensemble members) of one Predict: bounds the memory and time of one call.
    max_message_bytes : int
        Largest gRPC message received or sent (1 MiB to 2 GiB - 1, and at least ``max_upload_bytes`` + 2 MiB);
        Predict refuses a request whose response would not fit.
    max_upload_bytes : int
        Largest weights file RegisterModel accepts (at most the model file format's own cap, 64 MiB).
    keep_previous : int
        Versions an alias pointed at before that stay loaded, for instant rollback.
    cache_size : int
        Further versions (pinned by clients) kept loaded, least recently used dropped first.
    engine : str
        Rollout engine (:data:`identification.rollout.ENGINES`): ``"auto"`` (compiled C where a compiler
        is found, else numpy), ``"compiled"`` or ``"numpy"`` (the reference ``Surrogate.simulate``).
    envelope_margin : float
        A state or input counts as outside a model's training envelope (the ranges of its training data) only
        beyond this share of the envelope's width past either end (at most 1): the ranges of a finite training
        set are a little narrower than the distribution it was drawn from.
    max_envelope_excess : float
        Predict inputs (x0, u) farther outside the served model's training envelope than this many envelope
        widths are refused with INVALID_ARGUMENT; 0 (the default) refuses none: they are answered with
        ``input_warnings`` in the response.
    smoke_horizon : int
        Steps of the rollout from a nominal state that a version must survive with finite values before it
        is stored or served.
    max_watchers : int
        Watch streams open at once; more get RESOURCE_EXHAUSTED. ``max_watchers`` plus the historian's
        ``max_ingest_streams`` must be less than ``max_workers``, so that unary calls still find a thread.
    watch_queue_size : int
        Events a Watch stream buffers; a subscriber further behind gets a fresh snapshot instead.
    token : str, optional
        Bearer token of the management RPCs (at least 16 characters). Prefer ``token_env``; with neither,
        management is off.
    token_env : str, optional
        Name of an environment variable holding the token.
    tls_cert, tls_key : Path, optional
        PEM certificate chain and private key: serve TLS only (both or neither).
    metrics_port : int, optional
        Port of the Prometheus ``/metrics`` HTTP endpoint on ``metrics_host``; 0 picks a free one; None (the
        default) serves no endpoint.
    metrics_host : str
        Address of the metrics endpoint (loopback by default).
    grace_s : float
        Seconds in-flight calls get to finish when the server drains.
    heap_keep_mib : int
        Freed heap memory (MiB) that ``alutwin twin serve`` keeps mapped for reuse instead of handing it back to
        the system (glibc's allocator; see :func:`twin.cli.keep_freed_memory`). A large Predict
        allocates large buffers per call; reused pages save the page faults of fresh ones. 0 keeps the
        allocator's defaults.
    historian : HistorianConfig
        The measurement historian and its IngestService (a mapping in YAML); on by default.
    """

    store: ConfigPath
    port: Port
    store_poll_s: Annotated[PositiveNumber, Field(le=60)] = 1.0
    host: Host = "127.0.0.1"
    max_workers: PositiveInt = 16
    rollout_threads: PositiveInt = 2
    max_concurrent_predictions: PositiveInt = 8
    max_batch: PositiveInt = 1024
    max_horizon: PositiveInt = 8640
    max_work: PositiveInt = 5_000_000
    max_message_bytes: Annotated[PositiveInt, Field(ge=1 << 20, le=(1 << 31) - 1)] = 64 << 20
    max_upload_bytes: Annotated[PositiveInt, Field(le=64 << 20)] = 16 << 20
    keep_previous: NonNegativeInt = 3
    cache_size: NonNegativeInt = 4
    engine: Annotated[str, OneOf(ENGINES)] = "auto"
    envelope_margin: Annotated[NonNegativeNumber, Field(le=1)] = 0.1
    max_envelope_excess: NonNegativeNumber = 0.0
    smoke_horizon: Annotated[PositiveInt, Field(le=100_000)] = 60
    max_watchers: NonNegativeInt = 8
    watch_queue_size: PositiveInt = 256
    token: Token | None = None
    token_env: EnvName | None = None
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    metrics_port: Port | None = None
    metrics_host: Host = "127.0.0.1"
    grace_s: NonNegativeNumber = 5.0
    heap_keep_mib: Annotated[NonNegativeInt, Field(le=2047)] = 256
    historian: HistorianConfig = HistorianConfig()

    @model_validator(mode="after")
    def _check_together(self) -> TwinConfig:
        problems = []
        if self.max_watchers >= self.max_workers:
            problems.append(
                f"max_watchers ({self.max_watchers}) must be less than max_workers ({self.max_workers}), so that "
                "unary calls still find a thread while every Watch stream is open"
            )
        streams = self.historian.max_ingest_streams if self.historian.enabled else 0
        if streams and self.max_watchers < self.max_workers <= self.max_watchers + streams:
            problems.append(
                f"max_watchers ({self.max_watchers}) plus historian.max_ingest_streams ({streams}) must be less "
                f"than max_workers ({self.max_workers}), so that unary calls still find a thread while every "
                "stream is open"
            )
        if self.max_upload_bytes + (2 << 20) > self.max_message_bytes:
            problems.append(
                f"max_message_bytes ({self.max_message_bytes}) must exceed max_upload_bytes "
                f"({self.max_upload_bytes}) by at least 2 MiB (the manifest and the rest of the message)"
            )
        problems += self.security_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def historian_target(self) -> str | Path | None:
        """Where the historian lives: ``historian.url`` (PostgreSQL), else :attr:`historian_path`."""
        if self.historian.enabled and self.historian.url is not None:
            return self.historian.url
        return self.historian_path

    @property
    def historian_path(self) -> Path | None:
        """The historian's file (``historian.path``, else ``<store>/historian.sqlite``); None when it is off or on
        PostgreSQL (``historian.url``)."""
        if not self.historian.enabled or self.historian.url is not None:
            return None
        return self.historian.path if self.historian.path is not None else self.store / HISTORIAN_FILE
