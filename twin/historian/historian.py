"""The twin's historian: measured samples of each cell, stored durably, with bad samples quarantined.

:class:`Historian` is the small storage interface (append, read a window, counts, quarantine) that the ingest
service and the online re-fit code against; :class:`~twin.historian.sqlite.SQLiteHistorian` is the embedded
implementation (one SQLite file in WAL mode with ``synchronous=FULL``: a sample is on disk before
:meth:`Historian.append` returns, so an acknowledged sample survives ``kill -9`` of the twin, and other processes
can read while the twin writes). A server database can replace it behind the same interface.

Every sample is checked before it is stored (:func:`twin.historian.samples.check_sample`): wrong shapes,
non-finite numbers, values outside physical bounds (the plant's valid domain included), a step not after the
cell's last accepted step, or a step already stored. A bad sample is never silently dropped: it goes to the
quarantine with a :class:`QuarantineReason` and a detail in words.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AppendResult",
    "Historian",
    "HistorianClosed",
    "HistorianError",
    "QuarantineReason",
    "Quarantined",
    "Sample",
    "Window",
]


class HistorianError(Exception):
    """The historian cannot be opened or used (bad file, other schema)."""


class HistorianClosed(HistorianError):
    """A call on a historian that has been closed."""


@dataclass(frozen=True)
class Sample:
    """One measurement of one cell.

    Attributes
    ----------
    cell : index of the cell.
    step : plant step index of the measurement (the state is ``x[step]``).
    time_s : plant time, s.
    x : (8,) measured state, in the order of :data:`plant.signals.STATES`.
    u : (5,) inputs applied over the step that ended at ``step`` (from ``step - 1`` to ``step``); at step 0 the
        input the cell applies next (there is no earlier step).
    """

    cell: int
    step: int
    time_s: float
    x: np.ndarray
    u: np.ndarray


class QuarantineReason(enum.Enum):
    """Why a sample was not accepted."""

    NON_FINITE = "non_finite"
    """``time_s``, ``x`` or ``u`` holds NaN or infinity."""
    OUT_OF_BOUNDS = "out_of_bounds"
    """A value outside physical bounds or the plant's valid domain (:class:`SampleBounds`)."""
    OUT_OF_ORDER = "out_of_order"
    """The step is not after the cell's last accepted step (and not stored), or time went backwards."""
    DUPLICATE = "duplicate"
    """The cell already has a sample at this step (the detail says whether it is identical or conflicting)."""
    BAD_SHAPE = "bad_shape"
    """``x`` does not hold 8 numbers or ``u`` does not hold 5."""
    BAD_INDEX = "bad_index"
    """``cell`` or ``step`` is not an integer in ``[0, MAX_INDEX]``."""


@dataclass(frozen=True)
class Quarantined:
    """A sample that was not accepted, with why.

    ``cell`` and ``step`` are None when they were not valid integers; ``x`` and ``u`` hold what was sent
    (possibly of the wrong length, at most 64 values kept); ``received_at`` is unix time (s).
    """

    cell: int | None
    step: int | None
    time_s: float
    x: np.ndarray
    u: np.ndarray
    reason: QuarantineReason
    detail: str
    received_at: float  # unix time, s
    index: int | None = None
    """Position of the sample in its :meth:`Historian.append` call; None when read back from the store."""


@dataclass(frozen=True)
class AppendResult:
    """Outcome of one :meth:`Historian.append`: how many samples were stored and which were quarantined."""

    accepted: int
    quarantined: tuple[Quarantined, ...]


@dataclass(frozen=True)
class Window:
    """Accepted samples of one cell in ascending step order (read-only arrays)."""

    cell: int
    steps: np.ndarray  # (n,) int64
    time_s: np.ndarray  # (n,)
    x: np.ndarray  # (n, 8)
    u: np.ndarray  # (n, 5)

    def __len__(self) -> int:
        return int(self.steps.shape[0])


class Historian(abc.ABC):
    """Storage of the measured samples of every cell, with a quarantine of the bad ones.

    Implementations are thread-safe. :meth:`append` is atomic per call and durable when it returns.
    """

    @abc.abstractmethod
    def append(self, samples: Sequence[Sample]) -> AppendResult:
        """Check and store ``samples`` in order, as one transaction; bad ones go to the quarantine.

        Parameters
        ----------
        samples : sequence of Sample
            Any cells, in the order they were measured (per cell, ascending step).

        Returns
        -------
        AppendResult
            Samples stored, and the quarantined ones with their reasons. Both are durable once this returns.
        """

    @abc.abstractmethod
    def window(self, cell: int, start_step: int | None = None, end_step: int | None = None) -> Window:
        """Accepted samples of ``cell`` with ``start_step <= step < end_step`` (None: unbounded), ascending.

        An unknown cell gives an empty window.
        """

    @abc.abstractmethod
    def count(self, cell: int | None = None) -> int:
        """Accepted samples of ``cell``, or of every cell when None."""

    @abc.abstractmethod
    def last_step(self, cell: int) -> int | None:
        """The last accepted step of ``cell``, or None when it has none."""

    @abc.abstractmethod
    def cells(self) -> list[int]:
        """Cells that have accepted samples, ascending."""

    @abc.abstractmethod
    def quarantine(self, cell: int | None = None, limit: int = 1000) -> list[Quarantined]:
        """The latest ``limit`` quarantined samples (of ``cell``, or of all), oldest first."""

    @abc.abstractmethod
    def quarantine_counts(self) -> dict[QuarantineReason, int]:
        """Quarantined samples per reason (every reason present, zero included)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the storage; later calls raise :class:`HistorianClosed`. Closing twice is harmless."""

    backend: str = "generic"
    """Name of the storage kind (reported by the ingest service)."""

    def claim_writer(self) -> None:
        """Make this process the historian's one writer, or raise :class:`HistorianError` naming the one that is.

        This default claims nothing: for storage that serialises concurrent writers itself (a database server).
        The twin server calls it at start; readers (the online worker) never do.
        """
        return None

    def summary(self) -> list[tuple[int, int, int, int, float]]:
        """``(cell, count, first_step, last_step, last_time_s)`` of every cell with samples, ascending.

        This default reads every window; implementations override it with something cheaper.
        """
        out = []
        for c in self.cells():
            w = self.window(c)
            if len(w):
                out.append((c, len(w), int(w.steps[0]), int(w.steps[-1]), float(w.time_s[-1])))
        return out

    def __enter__(self) -> Historian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
