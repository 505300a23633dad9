"""How the closed loop talks to a cell: over the plant service (:class:`GrpcPlant`, the default) or to a
:class:`plant.potline.Potline` in the same process (:class:`LocalPlant`, the fast path for benchmarks).

Both speak in the MPC's terms: a measurement, the manipulated inputs ``v`` (3,) with NaN for "automatic",
and steps.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import numpy as np

from controller.problem import MANIPULATED
from plant.client import AUTOMATIC, PlantClient
from plant.potline import Potline

__all__ = ["GrpcPlant", "LocalPlant", "Observation", "PlantLink"]


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
        """Let the plant run ``n`` steps of ``dt``."""

    def close(self) -> None:
        """Release the connection (not the plant)."""
        return None  # nothing to release by default


class GrpcPlant(PlantLink):
    """One cell of a plant service, through :class:`plant.client.PlantClient` (stepped mode)."""

    def __init__(self, client: PlantClient, cell: int = 0) -> None:
        self.client = client
        self.cell = cell
        self.dt = client.info().dt

    def measure(self) -> Observation:
        m = self.client.state(self.cell, include_true=True)
        x = m.x_true if m.x_true is not None else m.x
        return Observation(m.step, m.x, x, m.u, int(m.fault), m.fault_text)

    def command(self, v: np.ndarray) -> None:
        values = {
            spec.command: (AUTOMATIC if math.isnan(float(val)) else float(val))
            for spec, val in zip(MANIPULATED, v, strict=True)
        }
        self.client.set_inputs(self.cell, **values)

    def advance(self, n: int = 1) -> None:
        self.client.step(n)


class LocalPlant(PlantLink):
    """One cell of a :class:`plant.potline.Potline` in this process."""

    def __init__(self, potline: Potline, cell: int = 0) -> None:
        self.potline = potline
        self.cell = potline.check_cell(cell)
        self.dt = potline.dt

    def measure(self) -> Observation:
        s = self.potline.snapshot(self.cell)
        return Observation(s.step, s.y, s.x, s.u, int(s.fault), s.fault_text)

    def command(self, v: np.ndarray) -> None:
        self.potline.set_commands(
            [(self.cell, spec.command, float(val)) for spec, val in zip(MANIPULATED, v, strict=True)]
        )

    def advance(self, n: int = 1) -> None:
        self.potline.step(n)
