"""Settings of the online re-fit worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from identification.online import Gate, RefitConfig, ScreenConfig, check_positive
from twin.historian import is_postgres_url

__all__ = ["WorkerConfig"]


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of the online re-fit worker.

    Parameters
    ----------
    twin : str
        ``host:port`` of the twin.
    historian : Path or str
        The historian's SQLite file, or a ``postgresql://`` URL (kept as a string; the password comes from libpq's
        own ``PGPASSWORD`` or ``~/.pgpass``).
    model : str
        Name of the model in the twin's registry.
    decisions : Path
        JSON-lines log of every decision (appended to).
    state : Path, optional
        JSON file of the worker's state (counters, latched sensor faults); None keeps it in memory only.
    alias : str
        The alias the worker reads its champion from and moves on promotion.
    token : str, optional
        The twin's management token (registering and moving aliases need it).
    root_certificates : bytes, optional
        PEM roots to trust: connect with TLS.
    every_samples : int, optional
        Re-fit after this many new accepted samples (all cells together).
    every_plant_s : float, optional
        Re-fit after this much plant time, s. At least one of the two triggers must be set.
    replay_s : float
        Training window before the held-out window, s of plant time.
    holdout_s : float
        Held-out window at the end of the data, s; it must hold at least ``horizon`` steps.
    horizon : int
        Steps of each evaluation rollout (360 = 1 h of 10 s steps).
    stride : int
        Steps between evaluation rollout starts.
    min_train_steps : int
        Fewest training transitions (all cells) for a re-fit.
    cells : tuple of int, optional
        Cells to learn from (None: every cell in the historian).
    refit : RefitConfig
        How challengers are trained (the cycle number is added to its seed).
    gate : Gate
        When a challenger is promoted.
    screen : ScreenConfig, optional
        Sensor-fault screening; None trusts the data (the gate is then the only guard).
    register_rejected : bool
        Register rejected challengers (without an alias) so that they are visible in the registry.
    poll_s : float
        Seconds between looks at the historian in :meth:`OnlineWorker.run`.
    retry_initial_s, retry_max_s : float
        Backoff of calls while the twin is unavailable.
    call_timeout_s : float
        Deadline of each call to the twin.
    engine : str
        Rollout engine of the evaluation.
    """

    twin: str
    historian: Path | str
    model: str
    decisions: Path
    state: Path | None = None
    alias: str = "champion"
    token: str | None = None
    root_certificates: bytes | None = None
    every_samples: int | None = None
    every_plant_s: float | None = 3600.0
    replay_s: float = 4 * 3600.0
    holdout_s: float = 1.5 * 3600.0
    horizon: int = 360
    stride: int = 30
    min_train_steps: int = 360
    cells: tuple[int, ...] | None = None
    refit: RefitConfig = field(default_factory=lambda: RefitConfig(lr=1e-3, epochs=20, half_life_steps=540.0))
    gate: Gate = field(default_factory=Gate)
    screen: ScreenConfig | None = field(default_factory=ScreenConfig)
    register_rejected: bool = True
    poll_s: float = 2.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    call_timeout_s: float = 60.0
    engine: str = "auto"

    def __post_init__(self) -> None:
        owner = "WorkerConfig"
        for name in ("twin", "model", "alias"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"{owner}.{name} must be a non-empty string, got {v!r}")
        for name in ("historian", "decisions", "state"):
            v = getattr(self, name)
            if (v is None and name == "state") or (name == "historian" and is_postgres_url(v)):
                continue
            if not isinstance(v, (str, os.PathLike)) or not os.fspath(v):
                raise ValueError(f"{owner}.{name} must be a path, got {v!r}")
            object.__setattr__(self, name, Path(v))
        if self.every_samples is None and self.every_plant_s is None:
            raise ValueError(f"{owner}: set every_samples or every_plant_s (or both)")
        if self.every_samples is not None and (
            isinstance(self.every_samples, bool) or not isinstance(self.every_samples, int) or self.every_samples < 1
        ):
            raise ValueError(f"{owner}.every_samples must be a positive integer or None, got {self.every_samples!r}")
        if self.every_plant_s is not None:
            check_positive(owner, "every_plant_s", self.every_plant_s)
        for name in ("replay_s", "holdout_s", "poll_s", "retry_initial_s", "retry_max_s", "call_timeout_s"):
            check_positive(owner, name, getattr(self, name))
        for name in ("horizon", "stride", "min_train_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{owner}.{name} must be a positive integer, got {v!r}")
        if self.cells is not None:
            cells = tuple(self.cells)
            if not cells or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cells):
                raise ValueError(f"{owner}.cells must be non-negative integers or None, got {self.cells!r}")
            object.__setattr__(self, "cells", cells)
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError(f"{owner}.token must be a non-empty string or None")
        for name, cls in (("refit", RefitConfig), ("gate", Gate)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{owner}.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.screen is not None and not isinstance(self.screen, ScreenConfig):
            raise ValueError(f"{owner}.screen must be a ScreenConfig or None")
