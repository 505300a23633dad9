"""What a replica needs to follow the changes other processes make to a shared store: the events between two
states, and the thread that polls the store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from twin.registry.store import StoreState
from twin.results import EventType, RegistryEvent

__all__ = ["StorePoller", "events_between"]

log = logging.getLogger(__name__)


def events_between(old: StoreState, new: StoreState, time_ms: int) -> list[RegistryEvent]:
    """The events that lead from ``old`` to ``new`` as far as the two states tell: each new version, then each
    alias whose target changed (ROLLED_BACK when its history got shorter, else ALIAS_MOVED).

    Revisions count up to ``new.revision`` (never below ``old.revision + 1``), so that a watcher's order holds.
    """
    changes: list[tuple[EventType, str, int, str, int]] = []
    for name, rec in new.models.items():
        before = old.models.get(name)
        old_versions = before.versions if before is not None else {}
        old_aliases = before.aliases if before is not None else {}
        old_history = before.history if before is not None else {}
        for v in rec.versions:
            if v not in old_versions:
                changes.append((EventType.VERSION_REGISTERED, name, v, "", 0))
        for alias, v in rec.aliases.items():
            previous = old_aliases.get(alias, 0)
            if v != previous:
                shorter = len(rec.history.get(alias, ())) < len(old_history.get(alias, ()))
                kind = EventType.ROLLED_BACK if shorter else EventType.ALIAS_MOVED
                changes.append((kind, name, v, alias, previous))
    n = len(changes)
    return [
        RegistryEvent(max(old.revision + 1, new.revision - (n - 1 - i)), kind, name, v, alias, prev, time_ms)
        for i, (kind, name, v, alias, prev) in enumerate(changes)
    ]


class StorePoller:
    """A daemon thread that calls ``sync`` every ``interval_s`` seconds until :meth:`stop`.

    Parameters
    ----------
    sync : callable
        Looks for changes and applies them; an exception is logged and the polling goes on.
    interval_s : float
        Seconds between two calls (> 0).
    """

    def __init__(self, sync: Callable[[], object], interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._sync = sync
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-store-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sync()
            except Exception:  # a broken state file now must not end the polling for good
                log.exception("polling the model store failed; trying again in %.3g s", self.interval_s)

    def stop(self) -> None:
        """End the thread and wait for it."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
