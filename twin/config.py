"""Settings of the twin service: one typed, frozen dataclass that a YAML file fills (``deploy/twin.yaml``).

Only ``store`` and ``port`` are required; every other setting has an embedded default (a local directory model
store, loopback, no TLS, no metrics endpoint, management off until a token is configured). Relative paths in a
YAML file are relative to the file's own directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from identification.rollout import ENGINES

__all__ = ["DEFAULT_PORT", "HISTORIAN_FILE", "HistorianConfig", "TwinConfig"]

DEFAULT_PORT = 50061
"""Port of ``alutwin twin serve`` without a config (the plant service uses 50051)."""

HISTORIAN_FILE = "historian.sqlite"
"""Name of the historian's file in the model store directory when ``historian.path`` is not given."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_FIELDS = ("store", "tls_cert", "tls_key")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"TwinConfig.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"TwinConfig.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class HistorianConfig:
    """The ``historian`` section of :class:`TwinConfig`: where measurements are kept and what Ingest accepts.

    On by default: ingest needs the management token anyway, and a historian that is always there lets the online
    re-fit and the operators' tools count on it; ``enabled: false`` turns the IngestService off.

    Parameters
    ----------
    enabled : bool
        Serve ``alutwin.v1.IngestService`` over a historian.
    path : Path, optional
        The SQLite file; default ``<store>/historian.sqlite``, so that the one server that holds the store's lock
        is also the one writer of its historian.
    max_batch_samples : int
        Largest batch of one Ingest request.
    max_ingest_streams : int
        Ingest streams open at once (each holds a gRPC thread); more get RESOURCE_EXHAUSTED.
    max_quarantine_list : int
        Largest ``limit`` of ListQuarantine.
    """

    enabled: bool = True
    path: Path | None = None
    max_batch_samples: int = 10_000
    max_ingest_streams: int = 4
    max_quarantine_list: int = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"TwinConfig.historian.enabled must be true or false, got {self.enabled!r}")
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
                raise ValueError(f"TwinConfig.historian.path must be a path, got {self.path!r}")
            object.__setattr__(self, "path", Path(self.path))
        for name, high in (
            ("max_batch_samples", 1_000_000),
            ("max_ingest_streams", None),
            ("max_quarantine_list", None),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
                or (high is not None and value > high)
            ):
                bound = f"in [1, {high}]" if high is not None else ">= 1"
                raise ValueError(f"TwinConfig.historian.{name} must be an integer {bound}, got {value!r}")

    @classmethod
    def from_mapping(cls, data: Any, base_dir: str | os.PathLike[str] | None = None) -> HistorianConfig:
        """The section from a mapping (YAML); unknown keys raise a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"TwinConfig.historian must be a mapping of settings, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown historian setting(s) {unknown}; valid settings are {sorted(fields)}")
        values = dict(data)
        path = values.get("path")
        if base_dir is not None and isinstance(path, (str, os.PathLike)) and os.fspath(path):
            if not Path(path).is_absolute():
                values["path"] = Path(base_dir) / path
        return cls(**values)


@dataclass(frozen=True)
class TwinConfig:
    """Settings of a twin server.

    Parameters
    ----------
    store : Path
        Directory of the model store (created if missing).
    port : int
        TCP port; 0 picks a free one.
    host : str
        Address to bind; loopback by default. Bind another address only with TLS and a token.
    max_workers : int
        gRPC threads; each open Watch stream holds one.
    rollout_threads : int
        Threads that run rollouts (a bounded pool beside the gRPC threads).
    max_concurrent_predictions : int
        Predict calls running or queued at once; more get RESOURCE_EXHAUSTED.
    max_batch, max_horizon : int
        Largest B (scenarios) and H (steps) of one Predict.
    max_work : int
        Largest B * H * M (M = ensemble members) of one Predict: bounds the memory and time of one call.
    max_message_bytes : int
        Largest gRPC message received or sent; Predict refuses a request whose response would not fit.
    max_upload_bytes : int
        Largest weights file RegisterModel accepts (at most the model file format's own cap, 64 MiB).
    keep_previous : int
        Versions an alias pointed at before that stay loaded, for instant rollback.
    cache_size : int
        Further versions (pinned by clients) kept loaded, least recently used dropped first.
    engine : str
        Rollout engine (:data:`identification.rollout.ENGINES`): ``"auto"`` (compiled C where a compiler
        is found, else numpy), ``"compiled"`` or ``"numpy"`` (the reference ``Surrogate.simulate``).
    smoke_horizon : int
        Steps of the rollout from a nominal state that a version must survive with finite values before it
        is stored or served.
    max_watchers : int
        Watch streams open at once (less than ``max_workers``); more get RESOURCE_EXHAUSTED.
    watch_queue_size : int
        Events a Watch stream buffers; a subscriber further behind gets a fresh snapshot instead.
    token : str, optional
        Bearer token of the management RPCs. Prefer ``token_env``; with neither, management is off.
    token_env : str, optional
        Name of an environment variable holding the token.
    tls_cert, tls_key : Path, optional
        PEM certificate chain and private key: serve TLS only (both or neither).
    metrics_port : int
        Port of the Prometheus ``/metrics`` HTTP endpoint on ``metrics_host``; 0 = no endpoint.
    metrics_host : str
        Address of the metrics endpoint (loopback by default).
    grace_s : float
        Seconds in-flight calls get to finish when the server drains.
    heap_keep_mib : int
        Freed heap memory (MiB) that ``alutwin twin serve`` keeps mapped for reuse instead of handing it back to
        the system (glibc's allocator; see :func:`twin.serving.server.keep_freed_memory`). A large Predict allocates
        tens of MB per call; reused pages save the page faults of fresh ones (a fifth of a 300-cell call's time
        over gRPC on 2 cores). 0 keeps the allocator's defaults.
    historian : HistorianConfig
        The measurement historian and its IngestService (a mapping in YAML); on by default.
    """

    store: Path
    port: int
    host: str = "127.0.0.1"
    max_workers: int = 16
    rollout_threads: int = 2
    max_concurrent_predictions: int = 8
    max_batch: int = 1024
    max_horizon: int = 8640
    max_work: int = 5_000_000
    max_message_bytes: int = 64 << 20
    max_upload_bytes: int = 16 << 20
    keep_previous: int = 3
    cache_size: int = 4
    engine: str = "auto"
    smoke_horizon: int = 60
    max_watchers: int = 8
    watch_queue_size: int = 256
    token: str | None = None
    token_env: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    grace_s: float = 5.0
    heap_keep_mib: int = 256
    historian: HistorianConfig = HistorianConfig()

    def __post_init__(self) -> None:
        if isinstance(self.historian, Mapping):
            object.__setattr__(self, "historian", HistorianConfig.from_mapping(self.historian))
        if not isinstance(self.historian, HistorianConfig):
            raise ValueError(f"TwinConfig.historian must be a mapping of settings, got {self.historian!r}")
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is None and name != "store":
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise ValueError(f"TwinConfig.{name} must be a path, got {value!r}")
            object.__setattr__(self, name, Path(value))
        _check_int("port", self.port, 0, 65535)
        _check_int("metrics_port", self.metrics_port, 0, 65535)
        for name in ("max_workers", "rollout_threads", "max_concurrent_predictions", "max_batch", "max_horizon"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_work", self.max_work, 1)
        _check_int("max_message_bytes", self.max_message_bytes, 1 << 20, (1 << 31) - 1)
        _check_int("max_upload_bytes", self.max_upload_bytes, 1, 64 << 20)
        _check_int("keep_previous", self.keep_previous, 0)
        _check_int("cache_size", self.cache_size, 0)
        _check_int("smoke_horizon", self.smoke_horizon, 1, 100_000)
        _check_int("max_watchers", self.max_watchers, 0)
        _check_int("watch_queue_size", self.watch_queue_size, 1)
        _check_int("heap_keep_mib", self.heap_keep_mib, 0, 2047)
        if self.max_watchers >= self.max_workers:
            raise ValueError(
                f"TwinConfig.max_watchers ({self.max_watchers}) must be less than max_workers ({self.max_workers}),"
                " so that unary calls still find a thread while every Watch stream is open"
            )
        streams = self.historian.max_ingest_streams if self.historian.enabled else 0
        if self.max_watchers + streams >= self.max_workers:
            raise ValueError(
                f"TwinConfig.max_watchers ({self.max_watchers}) plus historian.max_ingest_streams ({streams}) must be "
                f"less than max_workers ({self.max_workers}), so that unary calls still find a thread while every "
                "stream is open"
            )
        if self.max_upload_bytes + (2 << 20) > self.max_message_bytes:
            raise ValueError(
                f"TwinConfig.max_message_bytes ({self.max_message_bytes}) must exceed max_upload_bytes "
                f"({self.max_upload_bytes}) by at least 2 MiB (the manifest and the rest of the message)"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"TwinConfig.engine must be one of {list(ENGINES)}, got {self.engine!r}")
        for name in ("host", "metrics_host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TwinConfig.{name} must be a non-empty string, got {value!r}")
        grace = self.grace_s
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
            raise ValueError(f"TwinConfig.grace_s must be a finite number >= 0, got {grace!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16):
            raise ValueError("TwinConfig.token must be a string of at least 16 characters")
        if self.token_env is not None and (
            not isinstance(self.token_env, str) or not _ENV_NAME.fullmatch(self.token_env)
        ):
            raise ValueError(f"TwinConfig.token_env must be an environment variable name, got {self.token_env!r}")
        if self.token is not None and self.token_env is not None:
            raise ValueError("TwinConfig: give token or token_env, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TwinConfig: tls_cert and tls_key go together (give both for TLS, or neither)")

    @property
    def historian_path(self) -> Path | None:
        """The historian's file (``historian.path``, else ``<store>/historian.sqlite``); None when it is off."""
        if not self.historian.enabled:
            return None
        return self.historian.path if self.historian.path is not None else self.store / HISTORIAN_FILE

    @property
    def tls(self) -> bool:
        """True when the server serves TLS."""
        return self.tls_cert is not None

    @property
    def loopback(self) -> bool:
        """True when ``host`` is a loopback address (or ``localhost``)."""
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def resolve_token(self) -> str | None:
        """The management token: ``token``, else the value of the ``token_env`` variable; None when neither is set.

        Raises
        ------
        ValueError
            The variable holds a token shorter than 16 characters.
        """
        if self.token is not None:
            return self.token
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            return None
        if len(value) < 16:
            raise ValueError(f"the token in ${self.token_env} must be at least 16 characters long")
        return value

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], source: str = "config", base_dir: str | os.PathLike[str] | None = None
    ) -> TwinConfig:
        """A config from a mapping (e.g. parsed YAML); unknown or missing keys raise a ValueError naming them.

        Relative paths are taken relative to ``base_dir`` when it is given.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; valid settings are {sorted(fields)}")
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data]
        if missing:
            raise ValueError(f"{source}: missing required setting(s) {missing}")
        values = dict(data)
        if base_dir is not None:
            for name in _PATH_FIELDS:
                value = values.get(name)
                if isinstance(value, (str, os.PathLike)) and os.fspath(value) and not Path(value).is_absolute():
                    values[name] = Path(base_dir) / value
        try:
            if "historian" in values and isinstance(values["historian"], Mapping):
                values["historian"] = HistorianConfig.from_mapping(values["historian"], base_dir)
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TwinConfig:
        """A config from a YAML file holding a mapping of the fields above."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_mapping({} if data is None else data, source=str(path), base_dir=path.parent)
