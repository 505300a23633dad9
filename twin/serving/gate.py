"""The drain gate: counts the twin's calls in progress and, once closed, turns new ones away while the running
ones finish."""

from __future__ import annotations

import threading

__all__ = ["Gate"]


class Gate:
    """Counts the twin's calls in progress; once closed, turns new ones away while the running ones finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def enter(self) -> bool:
        """Count a new call in; False once closed."""
        with self._cond:
            if self._closed:
                return False
            self._active += 1
            return True

    def exit(self) -> None:
        """Count a call out (one that :meth:`enter` let in)."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new calls and wait up to ``timeout`` s for the running ones; True if none is left."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._active == 0, timeout)
