"""What the twin's servicers talk to: the registry, the bounded rollout pool with its admission limit, and the
mapping of every exception to a status code."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from alutwin.rpc import Abort, status_mapping, unary_errors
from alutwin.v1 import twin_pb2
from twin.config import TwinConfig
from twin.registry import (
    DEFAULT_ALIAS,
    Conflict,
    InvalidRequest,
    ModelRegistry,
    NotFound,
    NotServable,
    RegistryClosed,
    ServedModel,
    TooManyWatchers,
)
from twin.results import ModelId

__all__ = ["TwinRuntime", "status_of", "unary"]

log = logging.getLogger(__name__)

status_of = status_mapping(
    {
        InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
        NotFound: grpc.StatusCode.NOT_FOUND,
        NotServable: grpc.StatusCode.FAILED_PRECONDITION,
        Conflict: grpc.StatusCode.ABORTED,
        TooManyWatchers: grpc.StatusCode.RESOURCE_EXHAUSTED,
        RegistryClosed: grpc.StatusCode.UNAVAILABLE,
    },
    "the twin service",
    log,
)
"""The status code and client-facing message of an exception in a twin call (no traces, no paths)."""

unary = unary_errors(status_of)
"""The decorator of the twin's unary handlers: exceptions become status codes (:func:`status_of`)."""


class TwinRuntime:
    """The registry and the rollout pool of one server, with the pool's admission limit.

    Parameters
    ----------
    config : TwinConfig
        ``rollout_threads`` and ``max_concurrent_predictions`` size the pool; the servicers read the rest.
    registry : ModelRegistry
        The models served.
    """

    def __init__(self, config: TwinConfig, registry: ModelRegistry) -> None:
        self.config = config
        self.registry = registry
        self._pool = concurrent.futures.ThreadPoolExecutor(config.rollout_threads, thread_name_prefix="twin-rollout")
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Predictions running or queued in the pool."""
        return self._in_flight

    def resolve(self, ref: twin_pb2.ModelRef) -> tuple[ServedModel, ModelId]:
        """The served model a ModelRef means, and its ModelId with the alias the ref named ("" for a version)."""
        if not ref.name:
            raise InvalidRequest("model.name is empty")
        which = ref.WhichOneof("selector")
        if which == "version":
            if ref.version == 0:
                raise InvalidRequest("model.version must be >= 1 (versions count from 1)")
            served, alias = self.registry.resolve(ref.name, version=ref.version), ""
        else:
            alias = ref.alias if which == "alias" else DEFAULT_ALIAS
            served = self.registry.resolve(ref.name, alias=alias)
        return served, ModelId(served.name, served.version, alias)

    def run(self, work: Callable[[], Any], timeout: float | None) -> Any:
        """Run ``work`` in the rollout pool and wait for it at most ``timeout`` s (None: no deadline).

        Raises Abort with RESOURCE_EXHAUSTED when ``max_concurrent_predictions`` are running or queued, with
        DEADLINE_EXCEEDED when the deadline passes first, and with UNAVAILABLE once the pool is closed.
        """
        limit = self.config.max_concurrent_predictions
        with self._count_lock:
            if self._closed:
                raise Abort(grpc.StatusCode.UNAVAILABLE, "the twin is shutting down")
            if self._in_flight >= limit:
                raise Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._in_flight} predictions are running or queued, the most this server takes at once "
                    f"({limit}); retry later",
                )
            if timeout is not None and timeout <= 0:
                raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it started")
            self._in_flight += 1
            future = self._pool.submit(work)
        future.add_done_callback(self._release)  # the slot stays taken until the work really ends
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the prediction did not finish within the call's deadline ({timeout:.3g} s left when it was queued)",
            ) from None

    def _release(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def close(self) -> None:
        """Refuse new predictions and wait for the pool's work to end."""
        with self._count_lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
