"""The measurement streams of the plant service: each stream's bounded queue (:class:`Subscriber`: a slow reader
loses its oldest messages, counted, instead of slowing the plant's clock) and the fan-out of every step to them
(:class:`Broadcaster`)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from plant.potline import CellSnapshot

__all__ = ["Broadcaster", "StreamClosed", "Subscriber", "TooManyStreams"]


class StreamClosed(Exception):
    """The stream's subscriber was closed (client gone or server stopping)."""


class TooManyStreams(Exception):
    """All stream slots are taken."""


class Subscriber:
    """One stream's bounded queue of snapshots; when full the oldest message is dropped and counted.

    Parameters
    ----------
    cells : frozenset of int, optional
        Cells to deliver; None for all.
    every : int
        Deliver steps whose index is a multiple of this.
    maxlen : int
        Capacity of the queue.
    """

    def __init__(self, cells: frozenset[int] | None, every: int, maxlen: int) -> None:
        self.cells = cells
        self.every = every
        self._queue: deque[CellSnapshot] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def offer(self, snaps: Iterable[CellSnapshot], force: bool = False) -> None:
        """Queue the snapshots of one step that this subscriber wants (``force``: ignore ``every``)."""
        with self._cond:
            if self._closed:
                return
            added = False
            for s in snaps:
                if (self.cells is not None and s.cell not in self.cells) or (not force and s.step % self.every):
                    continue
                if len(self._queue) >= self._maxlen:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(s)
                added = True
            if added:
                self._cond.notify_all()

    def get(self, timeout: float) -> tuple[CellSnapshot, int] | None:
        """The next snapshot and the drop count so far, or None after ``timeout`` s; StreamClosed once closed."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                raise StreamClosed
            if not self._queue:
                return None
            return self._queue.popleft(), self.dropped

    def close(self) -> None:
        """End the stream: a waiting :meth:`get` returns at once with StreamClosed."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


class Broadcaster:
    """Fans each step's snapshots out to the subscribers; never blocks on a slow one."""

    def __init__(self, queue_size: int, max_subscribers: int) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._closed = False

    def subscribe(self, cells: frozenset[int] | None, every: int, initial: Iterable[CellSnapshot]) -> Subscriber:
        """A new subscriber whose queue starts with ``initial``; TooManyStreams or StreamClosed if refused."""
        with self._lock:
            if self._closed:
                raise StreamClosed
            if len(self._subs) >= self.max_subscribers:
                raise TooManyStreams
            sub = Subscriber(cells, every, self.queue_size)
            sub.offer(initial, force=True)
            self._subs.add(sub)
            return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.close()
        with self._lock:
            self._subs.discard(sub)

    def publish(self, snaps: list[CellSnapshot]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(snaps)

    def close(self) -> None:
        """Close every subscriber and refuse new ones."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            sub.close()

    @property
    def count(self) -> int:
        """Subscribers open now."""
        with self._lock:
            return len(self._subs)
