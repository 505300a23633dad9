"""Names, units and index tables of the cell's signals: the one place they are defined."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Signal",
    "STATES",
    "INPUTS",
    "STATE_NAMES",
    "INPUT_NAMES",
    "N_STATES",
    "N_INPUTS",
    "X",
    "U",
]


@dataclass(frozen=True)
class Signal:
    """One named signal of the cell model."""

    index: int
    name: str
    unit: str
    description: str
    low: float
    high: float


STATES: tuple[Signal, ...] = (
    Signal(0, "m_ledge", "kg", "mass of frozen side ledge (solid cryolite)", 1700.0, 4800.0),
    Signal(1, "m_al2o3", "kg", "dissolved alumina in the bath", 300.0, 750.0),
    Signal(2, "m_alf3", "kg", "aluminium fluoride in the bath", 1500.0, 2450.0),
    Signal(3, "m_cryolite", "kg", "molten cryolite in the bath", 11500.0, 17500.0),
    Signal(4, "m_metal", "kg", "liquid aluminium metal pad", 9750.0, 10000.0),
    Signal(5, "T_bath", "degC", "bath temperature", 955.0, 995.0),
    Signal(6, "T_ledge", "degC", "side-ledge temperature", 730.0, 880.0),
    Signal(7, "T_wall", "degC", "side-wall temperature", 500.0, 670.0),
)
"""State vector ``x`` in order; ``low``/``high`` give the typical range of the spec."""

INPUTS: tuple[Signal, ...] = (
    Signal(0, "feed_al2o3", "kg/s", "alumina feed rate", 0.0, 22.0),
    Signal(1, "current", "A", "line current", 118_000.0, 155_000.0),
    Signal(2, "feed_alf3", "kg/s", "AlF3 feed rate", 0.0, 10.0),
    Signal(3, "tapping", "kg/s", "metal tapping rate", 0.0, 9.0),
    Signal(4, "acd", "m", "anode-cathode distance", 0.043, 0.057),
)
"""Input vector ``u`` in order; ``low``/``high`` give the range of the spec."""

STATE_NAMES: tuple[str, ...] = tuple(s.name for s in STATES)
INPUT_NAMES: tuple[str, ...] = tuple(s.name for s in INPUTS)
N_STATES = len(STATES)
N_INPUTS = len(INPUTS)


class X:
    """Indices into the state vector."""

    M_LEDGE = 0
    M_AL2O3 = 1
    M_ALF3 = 2
    M_CRYOLITE = 3
    M_METAL = 4
    T_BATH = 5
    T_LEDGE = 6
    T_WALL = 7


class U:
    """Indices into the input vector."""

    FEED_AL2O3 = 0
    CURRENT = 1
    FEED_ALF3 = 2
    TAPPING = 3
    ACD = 4
