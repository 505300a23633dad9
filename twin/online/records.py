"""What the worker writes down: one :class:`CycleRecord` per cycle, appended to a JSON-lines decisions log, and its
own state (counters, latched sensor faults) in a JSON file, so that it can restart where it stopped."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alutwin.fileio import write_atomic
from identification.online import Decision, RefitResult

__all__ = ["CycleRecord", "append_record", "fresh_state", "load_state", "save_state", "summary_line"]


@dataclass(frozen=True)
class CycleRecord:
    """One cycle of the worker, as written to the decisions log."""

    event: str  # "promoted", "rejected", "skipped", "failed"
    reason: str
    cycle: int
    plant_step: int
    plant_time_s: float
    champion_version: int
    challenger_version: int | None
    decision: Decision | None
    refit: RefitResult | None
    faults: tuple[dict[str, Any], ...]
    seconds: dict[str, float]
    time_utc: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_utc": self.time_utc,
            "event": self.event,
            "reason": self.reason,
            "cycle": self.cycle,
            "plant_step": self.plant_step,
            "plant_time_s": self.plant_time_s,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "decision": None if self.decision is None else self.decision.as_dict(),
            "refit": None if self.refit is None else self.refit.as_dict(),
            "faults": list(self.faults),
            "seconds": dict(self.seconds),
        }


def append_record(path: Path, record: CycleRecord) -> None:
    """Append ``record`` as one JSON line to the decisions log at ``path`` (created with its folder), fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.as_dict(), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def summary_line(record: CycleRecord) -> str:
    """The line the worker says for a record: event, new version, reason and the two 1-hour errors."""
    d = record.decision
    figures = ""
    if d is not None:
        figures = f" [1-h AN-RFMSE champion {d.champion['an_rfmse_mean']}, challenger {d.challenger['an_rfmse_mean']}]"
    hours = record.plant_time_s / 3600.0
    version = f" -> v{record.challenger_version}" if record.challenger_version else ""
    return f"online: cycle {record.cycle} at plant {hours:.2f} h: {record.event}{version}: {record.reason}{figures}"


def fresh_state() -> dict[str, Any]:
    """The state of a worker that has not run a cycle yet."""
    return {"cycles": 0, "count_at_last": 0, "time_at_last": None, "latched": {}}


def load_state(path: Path | None) -> dict[str, Any]:
    """The worker state kept at ``path``; a fresh state when there is none (or ``path`` is None).

    Raises
    ------
    ValueError
        The file is unreadable or does not hold exactly the state's keys.
    """
    fresh = fresh_state()
    if path is None or not path.exists():
        return fresh
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"worker state {path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != set(fresh):
        raise ValueError(f"worker state {path} must hold exactly the keys {sorted(fresh)}")
    return doc


def save_state(path: Path | None, state: dict[str, Any]) -> None:
    """Replace the state file at ``path`` atomically (nothing when ``path`` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(state, indent=1) + "\n").encode("utf-8"))
