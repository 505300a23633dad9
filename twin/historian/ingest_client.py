"""A small typed client of ``alutwin.v1.IngestService``: send :class:`~twin.historian.historian.Sample` batches to the twin's
historian and read what it holds (the messages are converted by :mod:`twin.historian.codec`).

Example::

    with IngestClient("127.0.0.1:50061", token=token) as ingest:
        ack = ingest.ingest(samples)                 # one batch (split if large); durable when it returns
        ack.accepted, ack.quarantined, ack.progress  # progress: cell -> last accepted step
        with ingest.stream() as stream:              # a long-lived stream: one ack per batch
            for batch in batches:
                stream.send(batch)
        ingest.info().cells[0].last_step

Errors of the service arrive as :class:`grpc.RpcError` (``.code()``, ``.details()``).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.rpc import bearer_metadata, open_channel
from alutwin.v1 import ingest_pb2, ingest_pb2_grpc
from twin.historian.codec import INGEST_SERVICE, REASON_FROM_PB, quarantined_from_pb, sample_to_pb
from twin.historian.historian import AppendResult, Quarantined, QuarantineReason, Sample

__all__ = ["CellHistory", "HistorianInfo", "IngestAck", "IngestClient", "IngestStream", "StreamEnded"]

_KEEPALIVE = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class IngestAck:
    """The acknowledgement of one batch: it is durably committed.

    Attributes
    ----------
    batch_id : the batch's number (as sent).
    accepted : samples stored.
    quarantined : samples quarantined, with reasons (``index``: position in the batch).
    progress : cell -> its last accepted step after the batch (resume from the next step).
    """

    batch_id: int
    accepted: int
    quarantined: tuple[Quarantined, ...]
    progress: dict[int, int]

    @property
    def result(self) -> AppendResult:
        """The same as the historian's :class:`~twin.historian.historian.AppendResult`."""
        return AppendResult(self.accepted, self.quarantined)

    @classmethod
    def from_pb(cls, msg: ingest_pb2.IngestAck) -> IngestAck:
        return cls(
            batch_id=msg.batch_id,
            accepted=msg.accepted,
            quarantined=tuple(quarantined_from_pb(q) for q in msg.quarantined),
            progress={p.cell: p.last_step for p in msg.progress},
        )


@dataclass(frozen=True)
class CellHistory:
    """Samples of one cell in the historian."""

    cell: int
    count: int
    first_step: int
    last_step: int
    last_time_s: float


@dataclass(frozen=True)
class HistorianInfo:
    """What the twin's historian holds (``GetHistorianInfo``)."""

    cells: dict[int, CellHistory]
    total_samples: int
    quarantine_counts: dict[QuarantineReason, int]
    backend: str
    max_batch_samples: int
    max_quarantine_list: int

    def last_step(self, cell: int) -> int | None:
        """The last accepted step of ``cell``, or None when it has none."""
        h = self.cells.get(cell)
        return None if h is None else h.last_step


# ---------------------------------------------------------------------------------------------------------------
# Client


class StreamEnded(grpc.RpcError):
    """The twin ended an Ingest stream (status OK) before acknowledging a batch; retry on a new stream."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)


class IngestStream:
    """An open ``Ingest`` stream: :meth:`send` a batch, get its acknowledgement (after the twin's commit).

    Made by :meth:`IngestClient.stream`; :meth:`close` (or ``with``) ends it.

    Parameters
    ----------
    stub : IngestServiceStub
    metadata : sequence of (str, str)
        Call metadata (the bearer token).
    ack_timeout : float
        Seconds :meth:`send` waits for an acknowledgement before it cancels the stream.
    """

    def __init__(
        self, stub: ingest_pb2_grpc.IngestServiceStub, metadata: Sequence[tuple[str, str]], ack_timeout: float
    ):
        self._requests: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()
        self._ack_timeout = ack_timeout
        self._call = stub.Ingest(self._generate(), metadata=list(metadata))
        self._next_id = 1
        self._lock = threading.Lock()
        self._closed = False

    def _generate(self) -> Iterator[ingest_pb2.IngestRequest]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def send(self, samples: Sequence[Sample]) -> IngestAck:
        """Send one batch and wait for its acknowledgement.

        Raises
        ------
        grpc.RpcError
            The stream failed (the batch may or may not be committed: resend it; stored samples then come back
            as DUPLICATE "identical re-send" and change nothing). ``CANCELLED`` when no ack came within
            ``ack_timeout``.
        ValueError
            The stream is closed, or ``samples`` is empty.
        """
        batch = list(samples)
        if not batch:
            raise ValueError("samples is empty; a batch holds at least one sample")
        with self._lock:
            if self._closed:
                raise ValueError("the ingest stream is closed")
            request = ingest_pb2.IngestRequest(batch_id=self._next_id, samples=[sample_to_pb(s) for s in batch])
            self._next_id += 1
            self._requests.put(request)
            timer = threading.Timer(self._ack_timeout, self._call.cancel)
            timer.daemon = True
            timer.start()
            try:
                msg = next(self._call)
            except StopIteration:
                raise StreamEnded("the twin ended the ingest stream without an acknowledgement") from None
            finally:
                timer.cancel()
        return IngestAck.from_pb(msg)

    def close(self) -> None:
        """End the stream (the batches acknowledged so far stay stored)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self) -> IngestStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IngestClient:
    """Client of the twin's IngestService at ``address`` (``host:port``).

    Parameters
    ----------
    address : str
        Where the twin listens.
    token : str, optional
        Bearer token (Ingest is a management RPC).
    timeout : float
        Deadline of each unary call, and the longest wait for one batch's acknowledgement, s.
    root_certificates : bytes, optional
        PEM roots to trust: connect with TLS.
    options : sequence of (str, value)
        Further gRPC channel options.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.address = address
        self.timeout = float(timeout)
        opts = [*_KEEPALIVE, *options]
        self._channel = open_channel(address, root_certificates=root_certificates, options=opts)
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = bearer_metadata(token)

    def stream(self) -> IngestStream:
        """Open an Ingest stream (one acknowledgement per :meth:`IngestStream.send`)."""
        return IngestStream(self._stub, self._metadata, self.timeout)

    def ingest(self, samples: Sequence[Sample], *, batch_size: int | None = None) -> IngestAck:
        """Store ``samples`` (one stream, batches of at most ``batch_size``; default the server's limit).

        Returns
        -------
        IngestAck
            The acknowledgements of every batch merged: total accepted, every quarantined sample (``index`` is the
            position in ``samples``), the progress after the last batch.
        """
        batch = list(samples)
        if not batch:
            raise ValueError("samples is empty")
        size = self.info().max_batch_samples if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        acks = list(self.ingest_batches(batch[i : i + size] for i in range(0, len(batch), size)))
        quarantined: list[Quarantined] = []
        progress: dict[int, int] = {}
        for k, ack in enumerate(acks):
            quarantined.extend(dataclasses.replace(q, index=k * size + (q.index or 0)) for q in ack.quarantined)
            progress.update(ack.progress)
        return IngestAck(acks[-1].batch_id, sum(a.accepted for a in acks), tuple(quarantined), progress)

    def ingest_batches(self, batches: Iterable[Sequence[Sample]]) -> Iterator[IngestAck]:
        """Stream ``batches`` over one Ingest stream, yielding each one's acknowledgement in order."""
        with self.stream() as stream:
            for batch in batches:
                yield stream.send(batch)

    def info(self, cells: Iterable[int] = ()) -> HistorianInfo:
        """What the historian holds (of ``cells``; all when empty)."""
        r = self._stub.GetHistorianInfo(ingest_pb2.GetHistorianInfoRequest(cells=list(cells)), timeout=self.timeout)
        return HistorianInfo(
            cells={c.cell: CellHistory(c.cell, c.count, c.first_step, c.last_step, c.last_time_s) for c in r.cells},
            total_samples=r.total_samples,
            quarantine_counts={REASON_FROM_PB[q.reason]: q.count for q in r.quarantine if q.reason in REASON_FROM_PB},
            backend=r.backend,
            max_batch_samples=r.max_batch_samples,
            max_quarantine_list=r.max_quarantine_list,
        )

    def quarantine(self, cell: int | None = None, limit: int = 0) -> list[Quarantined]:
        """The latest ``limit`` quarantined samples (0: the server's default of 100), of ``cell`` or all."""
        req = ingest_pb2.ListQuarantineRequest(limit=limit)
        if cell is not None:
            req.cell = cell
        r = self._stub.ListQuarantine(req, timeout=self.timeout)
        return [quarantined_from_pb(q, with_index=False) for q in r.samples]

    def health(self, service: str = INGEST_SERVICE) -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of ``service``."""
        r = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
