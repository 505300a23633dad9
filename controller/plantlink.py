"""How the closed loop talks to a cell: over the plant service (:class:`GrpcPlant`, the default) or to a
:class:`plant.potline.Potline` in the same process (:class:`LocalPlant`, the fast path for benchmarks).

Both speak in the MPC's terms: a measurement, the manipulated inputs ``v`` (3,) with NaN for "automatic",
and steps. Links to several cells of one plant share its clock (:meth:`GrpcPlant.for_cells`): advancing each
link by a step advances the plant by one. A plant service in real-time mode keeps its own clock; its links
follow it, reading every step's measurement from one stream (:class:`PlantClock`).
"""

from __future__ import annotations

import abc
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller.problem import MANIPULATED
from plant.client import AUTOMATIC, Measurement, MeasurementStream, PlantClient
from plant.potline import Potline

__all__ = ["GrpcPlant", "LocalPlant", "Observation", "PlantClock", "PlantLink"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One cell at one step.

    Attributes
    ----------
    step : steps taken.
    y : (8,) measured state (noisy when the plant has noise).
    x : (8,) true state (for evaluation only; the controller sees ``y``).
    u : (5,) input applied over the last step.
    fault : fault code (0 while healthy); ``fault_text`` in words.
    """

    step: int
    y: np.ndarray
    x: np.ndarray
    u: np.ndarray
    fault: int
    fault_text: str


class PlantLink(abc.ABC):
    """A cell the loop can measure, command and advance."""

    dt: float = 10.0

    @abc.abstractmethod
    def measure(self) -> Observation:
        """The cell's present measurement."""

    @abc.abstractmethod
    def command(self, v: np.ndarray) -> None:
        """Hold the manipulated inputs ``v`` (3,); NaN hands that input to the cell's own control."""

    def automatic(self) -> None:
        """Hand every manipulated input back to the cell's own control."""
        self.command(np.full(len(MANIPULATED), np.nan))

    @abc.abstractmethod
    def advance(self, n: int = 1) -> None:
        """Let the cell run until it is ``n`` steps of ``dt`` past where this link was; a plant that other
        links of it already moved that far is not moved again."""

    @property
    def missed(self) -> int:
        """Steps of the cell this link could not record (a real-time plant it fell behind of)."""
        return 0

    def close(self) -> None:
        """Release the connection (not the plant)."""
        return None  # nothing to release by default


class PlantClock:
    """The clock of one plant service, shared by the links to its ``cells``.

    In stepped mode it steps the plant when a link needs a step the plant has not taken yet (so links that
    advance in lockstep step it once). In real-time mode the plant keeps its own clock: one stream of the cells'
    measurements (read by a thread into a queue) gives every link each step in order. A link that falls behind
    by more than the service's stream queue loses the oldest steps (logged, counted in :attr:`missed`).

    Parameters
    ----------
    client : PlantClient
        A connected client; its ``timeout`` (or three steps of a slow real-time plant) is also the longest wait
        for a real-time step.
    cells : sequence of int
        The cells whose links share this clock.
    """

    def __init__(self, client: PlantClient, cells: Sequence[int]) -> None:
        info = client.info()
        self.client = client
        self.cells = tuple(cells)
        self.dt = info.dt
        self.stepped = info.stepped
        self.step = info.step  # the plant's step as far as this clock knows
        self.wait_s = client.timeout if self.stepped else max(client.timeout, 3.0 * info.dt / info.real_time_factor)
        self.missed = dict.fromkeys(self.cells, 0)  # real-time steps lost per cell
        self._pending: dict[int, deque[Measurement]] = {c: deque() for c in self.cells}
        self._queue: queue.Queue[Measurement | Exception] = queue.Queue()
        self._stream: MeasurementStream | None = None
        self._reader: threading.Thread | None = None

    def reach(self, step: int) -> None:
        """Make sure the plant has taken ``step`` steps (stepped mode; a real-time plant gets there itself)."""
        if self.stepped and step > self.step:
            self.step = self.client.step(step - self.step)

    def measure(self, cell: int, at: int | None) -> Measurement:
        """``cell``'s measurement at step ``at`` (None: the present one)."""
        if self.stepped:
            m = self.client.state(cell, include_true=True)
            self.step = max(self.step, m.step)
            return m
        pending = self._pending[cell]
        while True:
            while pending:
                m = pending.popleft()
                if at is None or m.step >= at:
                    if at is not None and m.step > at:
                        self.missed[cell] += m.step - at
                        log.warning("cell %d: steps %d-%d of the real-time plant were lost", cell, at, m.step - 1)
                    return m
            self._next()

    def _next(self) -> None:
        if self._reader is None:
            self._stream = self.client.measurements(self.cells, include_true=True)
            self._reader = threading.Thread(
                target=self._read, args=(self._stream,), name="plant-clock-stream", daemon=True
            )
            self._reader.start()
        try:
            item = self._queue.get(timeout=self.wait_s)
        except queue.Empty:
            raise TimeoutError(
                f"no measurement from the real-time plant at {self.client.address} for {self.wait_s:g} s"
            ) from None
        if isinstance(item, Exception):
            self._queue.put(item)  # every later call fails the same way
            raise item
        self._pending[item.cell].append(item)

    def _read(self, stream: MeasurementStream) -> None:
        try:
            for m in stream:
                self._queue.put(m)
            self._queue.put(ConnectionError(f"the plant at {self.client.address} ended its measurement stream"))
        except Exception as exc:  # the stream's error (grpc.RpcError), for the loop to raise
            self._queue.put(exc)

    def close(self) -> None:
        """End the measurement stream (the client stays open)."""
        if self._stream is not None:
            self._stream.cancel()
        if self._reader is not None:
            self._reader.join(timeout=5.0)


class GrpcPlant(PlantLink):
    """One cell of a plant service, through :class:`plant.client.PlantClient`: stepped or real-time mode.

    Parameters
    ----------
    client : PlantClient
        A connected client.
    cell : int
        The cell.
    clock : PlantClock, optional
        The clock shared with links to other cells of the plant (:meth:`for_cells`); default a clock of its own.
    """

    def __init__(self, client: PlantClient, cell: int = 0, *, clock: PlantClock | None = None) -> None:
        self.client = client
        self.cell = cell
        self.clock = PlantClock(client, [cell]) if clock is None else clock
        self.dt = self.clock.dt
        self._at: int | None = None  # the step this link is at (None: not measured or moved yet)

    @classmethod
    def for_cells(cls, client: PlantClient, cells: Sequence[int]) -> list[GrpcPlant]:
        """Links to ``cells`` of one plant, sharing one :class:`PlantClock` (close it with any of them)."""
        clock = PlantClock(client, cells)
        return [cls(client, c, clock=clock) for c in cells]

    def measure(self) -> Observation:
        m = self.clock.measure(self.cell, self._at)
        self._at = m.step
        x = m.x_true if m.x_true is not None else m.x
        return Observation(m.step, m.x, x, m.u, int(m.fault), m.fault_text)

    def command(self, v: np.ndarray) -> None:
        values = {
            spec.command: (AUTOMATIC if math.isnan(float(val)) else float(val))
            for spec, val in zip(MANIPULATED, v, strict=True)
        }
        self.client.set_inputs(self.cell, **values)

    def advance(self, n: int = 1) -> None:
        self._at = (self.clock.step if self._at is None else self._at) + n
        self.clock.reach(self._at)

    @property
    def missed(self) -> int:
        return self.clock.missed[self.cell]

    def close(self) -> None:
        self.clock.close()


class LocalPlant(PlantLink):
    """One cell of a :class:`plant.potline.Potline` in this process."""

    def __init__(self, potline: Potline, cell: int = 0) -> None:
        self.potline = potline
        self.cell = potline.check_cell(cell)
        self.dt = potline.dt
        self._at = potline.step_index

    def measure(self) -> Observation:
        s = self.potline.snapshot(self.cell)
        return Observation(s.step, s.y, s.x, s.u, int(s.fault), s.fault_text)

    def command(self, v: np.ndarray) -> None:
        self.potline.set_commands(
            [(self.cell, spec.command, float(val)) for spec, val in zip(MANIPULATED, v, strict=True)]
        )

    def advance(self, n: int = 1) -> None:
        self._at += n
        behind = self._at - self.potline.step_index
        if behind > 0:
            self.potline.step(behind)
