"""The gRPC ``alutwin.v1.IngestService``: a thin servicer over a :class:`~twin.historian.historian.Historian`.

``Ingest`` is a bidirectional stream: each request is one batch of samples, answered by one acknowledgement once
the batch is committed (:meth:`~twin.historian.historian.Historian.append` is durable when it returns). Malformed requests
(an empty or oversized batch) get INVALID_ARGUMENT; bad *values* in a sample are not an error of the call but
quarantined by the historian and reported in the acknowledgement.

The requests of a stream are read by a small reader thread, so that the handler can notice a drain (the server
stopping) while the client is idle and end the stream with UNAVAILABLE instead of holding the shutdown up.
The bearer token of ``Ingest`` is checked by the server's interceptor (``twin.serving.MANAGEMENT_METHODS``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from alutwin.rpc import Abort, abort, open_or_abort, status_mapping, unary_errors
from alutwin.v1 import ingest_pb2, ingest_pb2_grpc
from twin.config import HistorianConfig
from twin.historian.codec import INGEST_SERVICE, REASON_TO_PB, quarantined_to_pb, sample_from_pb
from twin.historian.historian import Historian, HistorianClosed, QuarantineReason

__all__ = ["DEFAULT_QUARANTINE_LIST", "INGEST_SERVICE", "IngestServicer"]

log = logging.getLogger(__name__)

DEFAULT_QUARANTINE_LIST = 100
"""Quarantined samples ListQuarantine returns when the request's limit is 0."""

_POLL_S = 0.25  # how often an idle Ingest stream checks for a drain and that its client is still there
_NOTHING = object()
_END = object()


_status_of = status_mapping(
    {
        HistorianClosed: (grpc.StatusCode.UNAVAILABLE, "the twin's historian is closed (the twin is shutting down)"),
        ValueError: grpc.StatusCode.INVALID_ARGUMENT,
    },
    "the twin's ingest service",
    log,
)


_unary = unary_errors(_status_of)


class _RequestReader:
    """Reads a stream's requests in a thread, one ahead, so that the handler can wait with a timeout."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-ingest-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for request in self._requests:
                if not self._put(request):
                    return
            self._put(_END)
        except Exception as exc:  # the call was cancelled or ended: the handler sees it and stops
            self._put(exc)

    def get(self, timeout: float) -> Any:
        """The next request, ``_END``, an exception of the stream, or ``_NOTHING`` after ``timeout`` s."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return _NOTHING

    def stop(self) -> None:
        self._done.set()


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Converts IngestService messages to :class:`~twin.historian.historian.Historian` calls and back.

    Parameters
    ----------
    historian : Historian
        Where samples go; the servicer owns it and closes it in :meth:`close`.
    config : HistorianConfig
        Batch size and stream limits.
    """

    def __init__(self, historian: Historian, config: HistorianConfig) -> None:
        self.historian = historian
        self.config = config
        self._draining = threading.Event()
        self._streams_lock = threading.Lock()
        self._streams = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def drain(self) -> None:
        """End every Ingest stream (after its batch in progress) with UNAVAILABLE and refuse new ones."""
        self._draining.set()

    def close(self) -> None:
        """Drain and close the historian."""
        self.drain()
        self.historian.close()

    @property
    def open_streams(self) -> int:
        """Ingest streams open now."""
        with self._streams_lock:
            return self._streams

    # -- RPCs --------------------------------------------------------------------------------------------------

    def _check_batch(self, request: ingest_pb2.IngestRequest) -> None:
        n = len(request.samples)
        if n == 0:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {request.batch_id}: samples is empty")
        if n > self.config.max_batch_samples:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch {request.batch_id}: {n} samples is more than this server's max_batch_samples "
                f"({self.config.max_batch_samples}); split the batch",
            )

    def _ack(self, request: ingest_pb2.IngestRequest) -> ingest_pb2.IngestAck:
        self._check_batch(request)
        result = self.historian.append([sample_from_pb(s) for s in request.samples])
        cells = sorted({s.cell for s in request.samples})
        progress = []
        for c in cells:
            last = self.historian.last_step(c)
            if last is not None:
                progress.append(ingest_pb2.CellProgress(cell=c, last_step=last))
        return ingest_pb2.IngestAck(
            batch_id=request.batch_id,
            accepted=result.accepted,
            quarantined=[quarantined_to_pb(q) for q in result.quarantined],
            progress=progress,
        )

    def _open_stream(self) -> None:
        """Count a new Ingest stream in; Abort while draining or with ``max_ingest_streams`` open."""
        with self._streams_lock:
            limit = self.config.max_ingest_streams
            if self._draining.is_set():
                raise Abort(
                    grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); retry on another server"
                )
            if self._streams >= limit:
                raise Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._streams} ingest streams are open, the most this server takes ({limit}); retry later",
                )
            self._streams += 1

    def Ingest(
        self, request_iterator: Iterator[ingest_pb2.IngestRequest], context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.IngestAck]:
        open_or_abort(_status_of, context, self._open_stream)
        status: tuple[grpc.StatusCode, str] | None = None
        reader = _RequestReader(request_iterator)
        try:
            while True:
                item = reader.get(_POLL_S)
                if item is _NOTHING:
                    if self._draining.is_set():
                        raise Abort(grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); reconnect")
                    if not context.is_active():
                        return
                    continue
                if item is _END or isinstance(item, BaseException):
                    return
                ack = self._ack(item)
                yield ack
                if self._draining.is_set():
                    raise Abort(grpc.StatusCode.UNAVAILABLE, "the twin is draining (shutting down); reconnect")
        except Exception as exc:
            status = _status_of(exc)
        finally:
            reader.stop()
            with self._streams_lock:
                self._streams -= 1
        if status is not None:
            abort(context, *status)

    @_unary
    def GetHistorianInfo(
        self, request: ingest_pb2.GetHistorianInfoRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.HistorianInfo:
        h = self.historian
        rows = h.summary()
        wanted = set(request.cells)
        counts = h.quarantine_counts()
        return ingest_pb2.HistorianInfo(
            cells=[
                ingest_pb2.CellHistory(cell=c, count=n, first_step=first, last_step=last, last_time_s=t)
                for c, n, first, last, t in rows
                if not wanted or c in wanted
            ],
            total_samples=sum(r[1] for r in rows),
            quarantine=[ingest_pb2.QuarantineCount(reason=REASON_TO_PB[r], count=counts[r]) for r in QuarantineReason],
            backend=h.backend,
            max_batch_samples=self.config.max_batch_samples,
            max_quarantine_list=self.config.max_quarantine_list,
        )

    @_unary
    def ListQuarantine(
        self, request: ingest_pb2.ListQuarantineRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ListQuarantineResponse:
        limit = request.limit or DEFAULT_QUARANTINE_LIST
        if limit > self.config.max_quarantine_list:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit = {request.limit} is more than this server's max_quarantine_list "
                f"({self.config.max_quarantine_list})",
            )
        cell = request.cell if request.HasField("cell") else None
        items = self.historian.quarantine(cell, limit)
        return ingest_pb2.ListQuarantineResponse(samples=[quarantined_to_pb(q) for q in items])
