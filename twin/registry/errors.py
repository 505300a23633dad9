"""The registry's refusals: :class:`RegistryError` and its kinds (each maps to one gRPC status code), and the two
internal signals of a rejected model and a closed watcher."""

from __future__ import annotations

__all__ = [
    "Conflict",
    "InvalidRequest",
    "ModelRejected",
    "NotFound",
    "NotServable",
    "RegistryClosed",
    "RegistryError",
    "TooManyWatchers",
    "WatchClosed",
]


class RegistryError(Exception):
    """A refused registry operation; ``str(exc)`` is the client-facing message."""


class InvalidRequest(RegistryError):
    """Malformed names or arguments, or a refused upload (INVALID_ARGUMENT); ``field`` is the request field at
    fault when the message does not start with it (see :func:`alutwin.rpc.error_field`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class NotFound(RegistryError, LookupError):
    """Unknown model, version or alias (NOT_FOUND)."""


class NotServable(RegistryError):
    """The version exists but cannot serve: its files fail validation, or nothing to roll back to
    (FAILED_PRECONDITION)."""


class Conflict(RegistryError):
    """A compare-and-set alias move whose expectation no longer holds (ABORTED)."""


class TooManyWatchers(RegistryError):
    """All Watch slots are taken (RESOURCE_EXHAUSTED)."""


class RegistryClosed(RegistryError):
    """The registry is shutting down (UNAVAILABLE)."""


class WatchClosed(Exception):
    """The watcher was closed (client gone or server stopping)."""


class ModelRejected(Exception):
    """A model that fails validation; ``problem`` is fit for a client."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
