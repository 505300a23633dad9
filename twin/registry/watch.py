"""One Watch stream's queue of registry events, bounded: a watcher that falls behind gets a fresh snapshot."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from twin.registry.errors import WatchClosed
from twin.results import EventType, RegistryEvent

__all__ = ["Watcher"]


class Watcher:
    """One Watch stream's bounded queue of events. When it overflows, the queued events are replaced by a
    fresh snapshot at the next :meth:`get`, and events up to that snapshot's revision are skipped.

    Parameters
    ----------
    name : str
        The model watched ("" for all).
    maxlen : int
        Events the queue holds.
    snapshot : callable
        Makes a SNAPSHOT event of the registry now (called without the watcher's lock held).
    """

    def __init__(self, name: str, maxlen: int, snapshot: Callable[[], RegistryEvent]) -> None:
        self.name = name
        self._maxlen = maxlen
        self._snapshot = snapshot
        self._queue: deque[RegistryEvent] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._resync = True  # the first message is a snapshot
        self.resyncs = 0

    def offer(self, event: RegistryEvent) -> None:
        """Queue ``event`` if it concerns the watched model; on overflow, drop the queue for a snapshot."""
        if self.name and event.type is not EventType.SNAPSHOT and event.name != self.name:
            return
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._maxlen:
                self._queue.clear()
                self._resync = True
                self.resyncs += 1
            else:
                self._queue.append(event)
            self._cond.notify_all()

    def get(self, timeout: float) -> RegistryEvent | None:
        """The next event, or None after ``timeout`` s; WatchClosed once closed."""
        with self._cond:
            if not self._queue and not self._resync and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                raise WatchClosed
            resync, self._resync = self._resync, False
            if not resync:
                return self._queue.popleft() if self._queue else None
        snap = self._snapshot()  # takes the registry's lock: never while holding our own
        with self._cond:
            while self._queue and self._queue[0].revision <= snap.revision:
                self._queue.popleft()
        return snap

    def close(self) -> None:
        """End the watcher: a waiting :meth:`get` raises WatchClosed at once."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
