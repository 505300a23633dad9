"""The plant-to-twin bridge: forwards the plant service's measurement stream into the twin's historian.

:func:`run_bridge` subscribes to ``PlantService.StreamMeasurements`` and sends the measurements in batches over
``IngestService.Ingest``. Either side may restart: the bridge reconnects with exponential backoff, keeps what it
has read but the twin has not acknowledged, and resumes from the twin's last acknowledged step of each cell
(samples at or before it are skipped, so a restarted plant that replays its steps adds nothing twice). A batch is
dropped from the bridge's memory only once the twin has acknowledged it (durably committed).

What is forwarded: every measurement of a healthy cell (a faulted cell's held state is not dynamics and is
skipped, counted). At step 0 the plant's ``u`` is the input the cell applies next (there is no earlier step).

Command line (:mod:`twin.cli`): ``alutwin twin ingest --plant HOST:PORT --twin HOST:PORT`` (token from ``$ALUTWIN_TWIN_TOKEN``), or
``alutwin twin ingest --config deploy/bridge.yaml`` (:class:`BridgeConfig`; flags override the file).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated

import grpc
from pydantic import Field, model_validator

from alutwin.config import (
    Address,
    Config,
    ConfigPath,
    EnvName,
    NonNegativeInt,
    Number,
    PositiveInt,
    PositiveNumber,
    config_dataclass,
)
from plant.client import Measurement, MeasurementStream, PlantClient
from plant.domain import Fault
from twin.historian.historian import Sample
from twin.historian.ingest_client import IngestAck, IngestClient, IngestStream

__all__ = [
    "Backoff",
    "BridgeConfig",
    "BridgeError",
    "BridgeStats",
    "measurement_to_sample",
    "run_bridge",
]

log = logging.getLogger(__name__)

PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
    }
)
"""Status codes that retrying cannot mend (wrong token, no historian, unknown cells): the bridge stops on them."""


class BridgeError(Exception):
    """The bridge cannot go on (an error that retrying cannot mend); the message says which side and why."""


@config_dataclass
class Backoff(Config):
    """Exponential backoff between reconnection attempts: ``initial_s``, times ``factor`` each failure, at most
    ``max_s``; back to ``initial_s`` after a success.

    Parameters
    ----------
    initial_s : float
        First wait, s.
    max_s : float
        Longest wait, s (at least ``initial_s``).
    factor : float
        Growth of the wait per failure (>= 1).
    """

    initial_s: PositiveNumber = 0.1
    max_s: PositiveNumber = 5.0
    factor: Annotated[Number, Field(ge=1)] = 2.0

    @model_validator(mode="after")
    def _check_order(self) -> Backoff:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s:g}) must be at least initial_s ({self.initial_s:g})")
        return self

    def delays(self) -> Iterator[float]:
        """The waits before successive attempts."""
        d = self.initial_s
        while True:
            yield d
            d = min(d * self.factor, self.max_s)


@config_dataclass
class BridgeConfig(Config):
    """Settings of ``alutwin twin ingest`` (``deploy/bridge.yaml``; JSON schema ``deploy/schemas/bridge.schema.json``).

    Parameters
    ----------
    plant : str
        ``host:port`` of the plant service.
    twin : str
        ``host:port`` of the twin.
    cells : tuple of int
        Cells to forward; empty means all.
    every : int
        Forward every ``every``-th step.
    batch_size : int
        Most samples per batch (capped at the twin's ``max_batch_samples``).
    flush_s : float
        Longest a read sample waits for its batch to fill before the batch is sent anyway, s.
    max_buffer : int
        Samples read from the plant and not yet acknowledged that the bridge keeps; beyond it the oldest are
        dropped (counted in ``plant_dropped``).
    ack_timeout_s : float
        Longest wait for one batch's acknowledgement before the twin connection is considered lost, s.
    token_env : str, optional
        Name of the environment variable holding the twin's management token (Ingest needs it); None for none.
    tls_ca : Path, optional
        PEM file of the roots to trust: connect to the twin with TLS. In YAML, relative to the file's folder.
    backoff : Backoff
        Waits between reconnection attempts (each side separately).
    """

    plant: Address
    twin: Address
    cells: tuple[NonNegativeInt, ...] = ()
    every: PositiveInt = 1
    batch_size: PositiveInt = 500
    flush_s: PositiveNumber = 0.5
    max_buffer: PositiveInt = 1_000_000
    ack_timeout_s: PositiveNumber = 30.0
    token_env: EnvName | None = "ALUTWIN_TWIN_TOKEN"
    tls_ca: ConfigPath | None = None
    backoff: Backoff = Backoff()


@dataclasses.dataclass
class BridgeStats:
    """What a bridge has done so far (updated while it runs; read it from another thread as a snapshot)."""

    accepted: int = 0
    """Samples the twin stored."""
    quarantined: int = 0
    """Samples the twin quarantined."""
    batches: int = 0
    """Batches acknowledged."""
    skipped: int = 0
    """Measurements at or before the twin's last step of their cell (stored already)."""
    faulted: int = 0
    """Measurements of faulted cells, not forwarded."""
    plant_dropped: int = 0
    """Measurements lost: dropped by the plant's stream (read too slowly) or by the bridge's full buffer."""
    plant_connects: int = 0
    twin_connects: int = 0
    last_error: str = ""
    """The latest connection error, in words."""


def measurement_to_sample(m: Measurement) -> Sample:
    """The historian sample of a plant measurement (the measured ``x``, not the true state)."""
    return Sample(cell=m.cell, step=m.step, time_s=m.time_s, x=m.x, u=m.u)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class _PlantReader:
    """Reads the plant's measurement stream in a thread into a bounded buffer, reconnecting with backoff."""

    def __init__(
        self,
        address: str,
        cells: Sequence[int],
        every: int,
        max_buffer: int,
        backoff: Backoff,
        stats: BridgeStats,
        stop: threading.Event,
    ) -> None:
        self.address = address
        self.cells = tuple(cells)
        self.every = every
        self.stats = stats
        self._backoff = backoff
        self._stop = stop
        self._buffer: deque[Sample] = deque()
        self._max = max_buffer
        self._cond = threading.Condition()
        self._stream: MeasurementStream | None = None
        self.fatal: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bridge-plant-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            client = PlantClient(self.address)
            try:
                stream = client.measurements(self.cells, every=self.every)
                with self._cond:
                    self._stream = stream
                if self._stop.is_set():
                    return
                dropped_before = 0
                first = True
                for m in stream:
                    if first:
                        self.stats.plant_connects += 1
                        log.info("bridge: reading measurements from the plant at %s", self.address)
                        delays = self._backoff.delays()
                        first = False
                    if m.dropped > dropped_before:
                        self.stats.plant_dropped += m.dropped - dropped_before
                        dropped_before = m.dropped
                    if m.fault is not Fault.NONE:
                        self.stats.faulted += 1
                        continue
                    self._push(measurement_to_sample(m))
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if exc.code() in PERMANENT_CODES:
                    self.fatal = BridgeError(f"the plant at {self.address} refused the stream: {_describe(exc)}")
                    self._stop.set()
                    with self._cond:
                        self._cond.notify_all()
                    return
                self.stats.last_error = f"plant: {_describe(exc)}"
                log.warning("bridge: plant stream at %s failed (%s); reconnecting", self.address, _describe(exc))
            finally:
                with self._cond:
                    self._stream = None
                client.close()
            self._stop.wait(next(delays))

    def _push(self, sample: Sample) -> None:
        with self._cond:
            if len(self._buffer) >= self._max:
                self._buffer.popleft()
                self.stats.plant_dropped += 1
            self._buffer.append(sample)
            self._cond.notify_all()

    def take(self, n: int, deadline: float) -> list[Sample]:
        """Up to ``n`` buffered samples, waiting until ``deadline`` (monotonic) for the first one."""
        with self._cond:
            while not self._buffer and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out: list[Sample] = []
            while self._buffer and len(out) < n:
                out.append(self._buffer.popleft())
            return out

    def close(self) -> None:
        """End the stream (the stop event must be set first) and wait for the thread."""
        with self._cond:
            stream = self._stream
            self._cond.notify_all()
        if stream is not None:
            stream.cancel()
        self._thread.join(10.0)


def run_bridge(
    config: BridgeConfig,
    *,
    token: str | None = None,
    stop: threading.Event | None = None,
    root_certificates: bytes | None = None,
    on_ack: Callable[[IngestAck], None] | None = None,
    stats: BridgeStats | None = None,
) -> BridgeStats:
    """Forward the plant's measurements into the twin's historian until ``stop`` is set.

    Parameters
    ----------
    config : BridgeConfig
        Where from, where to, and how (its ``token_env`` and ``tls_ca`` are the caller's: see ``token`` and
        ``root_certificates``).
    token : str, optional
        The twin's management token (Ingest needs it).
    stop : threading.Event, optional
        Set it to end the bridge (it returns after its batch in flight); without one the bridge runs until an
        error that retrying cannot mend.
    root_certificates : bytes, optional
        PEM roots: connect to the twin with TLS.
    on_ack : callable, optional
        Called with every :class:`~twin.historian.ingest_client.IngestAck`, in the bridge's thread.
    stats : BridgeStats, optional
        Counters to update (pass one to watch progress from another thread).

    Returns
    -------
    BridgeStats
        What the bridge did.

    Raises
    ------
    BridgeError
        The twin or the plant refused in a way that retrying cannot mend (a wrong or missing token, a twin without
        historian, an unknown cell).
    """
    twin, backoff, flush_s = config.twin, config.backoff, config.flush_s
    stop = threading.Event() if stop is None else stop
    stats = BridgeStats() if stats is None else stats
    reader = _PlantReader(config.plant, config.cells, config.every, config.max_buffer, backoff, stats, stop)
    reader.start()
    pending: list[Sample] = []  # read, not yet acknowledged, in order
    high: dict[int, int] = {}  # per cell: the highest step acknowledged or pending
    client: IngestClient | None = None
    session: IngestStream | None = None
    delays = backoff.delays()
    limit = config.batch_size

    def disconnect() -> None:
        nonlocal client, session
        if session is not None:
            session.close()
        if client is not None:
            client.close()
        client = session = None

    def fail(exc: grpc.RpcError, what: str) -> None:
        if exc.code() in PERMANENT_CODES:
            raise BridgeError(f"the twin at {twin} refused {what}: {_describe(exc)}") from None
        stats.last_error = f"twin: {_describe(exc)}"
        log.warning("bridge: twin at %s: %s failed (%s); reconnecting", twin, what, _describe(exc))
        disconnect()
        stop.wait(next(delays))

    try:
        while not stop.is_set():
            if session is None:
                client = IngestClient(
                    twin, token=token, timeout=config.ack_timeout_s, root_certificates=root_certificates
                )
                try:
                    info = client.info()
                    session = client.stream()
                except grpc.RpcError as exc:
                    fail(exc, "the historian info")
                    continue
                stats.twin_connects += 1
                limit = max(1, min(config.batch_size, info.max_batch_samples))
                last = {c: h.last_step for c, h in info.cells.items()}
                kept = [s for s in pending if s.step > last.get(s.cell, -1)]
                stats.skipped += len(pending) - len(kept)
                pending = kept
                high = dict(last)
                for s in pending:
                    high[s.cell] = max(high.get(s.cell, -1), s.step)
                log.info("bridge: ingesting into the twin at %s (resuming after %s)", twin, last or "nothing")
            deadline = time.monotonic() + flush_s
            while len(pending) < limit and not stop.is_set():
                got = reader.take(limit - len(pending), deadline)
                for s in got:
                    if s.step <= high.get(s.cell, -1):
                        stats.skipped += 1
                        continue
                    high[s.cell] = s.step
                    pending.append(s)
                if time.monotonic() >= deadline:
                    break
            if not pending:
                continue
            batch = pending[:limit]
            try:
                ack = session.send(batch)
            except grpc.RpcError as exc:
                fail(exc, "a batch")
                continue
            pending = pending[len(batch) :]
            delays = backoff.delays()
            stats.batches += 1
            stats.accepted += ack.accepted
            stats.quarantined += len(ack.quarantined)
            if on_ack is not None:
                on_ack(ack)
    finally:
        stop.set()
        disconnect()
        reader.close()
    if reader.fatal is not None:
        raise reader.fatal
    return stats
