"""The cell's constants (``plant.md``, "Constants") as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["CellParams", "DomainLimits", "DEFAULT_PARAMS", "DEFAULT_LIMITS", "SPEC_VERSION"]

SPEC_VERSION = "plant.md/1"
"""Version tag of the equations implemented here; written into every data set."""


@dataclass(frozen=True)
class CellParams:
    """Physical constants of the Hall-Heroult cell model.

    The base quantities are fields; the lumped constants ``k0 .. k20`` of the spec are derived from them,
    so that a drift scenario can change one physical quantity (say the bath-to-ledge heat transfer) and every
    lumped constant that depends on it follows.
    """

    ledge_conductivity: float = 2.5  # W/(m K)
    wall_conductivity: float = 6.5  # W/(m K)
    wall_thickness: float = 0.1  # m
    h_bath_ledge: float = 1200.0  # W/(m^2 K)
    h_wall_ambient: float = 25.0  # W/(m^2 K)
    ledge_area: float = 17.92  # m^2
    heat_of_fusion: float = 119_495.0  # J/kg
    cp_liquid_cryolite: float = 1881.0  # J/(kg K)
    cp_solid_cryolite: float = 1320.0  # J/(kg K)
    cp_bath: float = 1767.0  # J/(kg K)
    k0: float = 2e-5  # m/kg, ledge thickness per kg
    k3: float = 1.7e-7  # kg alumina consumed per A s
    k4: float = 0.02
    k5: float = 0.03
    k6: float = 4.43e-8  # kg metal produced per A s
    k15: float = 0.2
    k17: float = 6e-7
    k19: float = 35.0  # ambient temperature, degC
    alpha: float = 5.66e-4
    beta: float = 7.58e-4
    liquidus_override: float | None = None
    """If set, the liquidus temperature is this constant (the CoSTA "wrong physics" model uses 968 degC)."""

    # Derived constants, filled in __post_init__ (not constructor arguments).
    k1: float = field(init=False)
    k2: float = field(init=False)
    k7: float = field(init=False)
    k8: float = field(init=False)
    k9: float = field(init=False)
    k10: float = field(init=False)
    k11: float = field(init=False)
    k12: float = field(init=False)
    k13: float = field(init=False)
    k14: float = field(init=False)
    k20: float = field(init=False)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name, None)
            if name == "liquidus_override" or not self.__dataclass_fields__[name].init:
                continue
            if not isinstance(value, (int, float)) or not value == value or value in (float("inf"), -float("inf")):
                raise ValueError(f"CellParams.{name} must be a finite number, got {value!r}")
        k1 = 2.0 * self.ledge_conductivity * self.ledge_area / self.heat_of_fusion
        k2 = self.h_bath_ledge * self.ledge_area / self.heat_of_fusion
        derived = {
            "k1": k1,
            "k2": k2,
            "k7": k2 * self.cp_liquid_cryolite,
            "k8": k1 * self.cp_liquid_cryolite,
            "k9": self.ledge_area,
            "k10": 1.0 / self.h_bath_ledge,
            "k11": 1.0 / (2.0 * self.ledge_conductivity),
            "k12": k2 * self.cp_solid_cryolite,
            "k13": k1 * self.cp_solid_cryolite,
            "k14": self.wall_thickness / (2.0 * self.wall_conductivity),
            "k20": 1.0 / self.h_wall_ambient,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def with_changes(self, **changes: float) -> CellParams:
        """A copy with some base quantities changed (derived constants recomputed)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class DomainLimits:
    """Where the model is valid (``plant.md``, "Where the model stops being valid").

    A ledge thinner than ``min_ledge_mass`` (500 kg is 1 cm of ledge with k0 = 2e-5 m/kg) makes the ledge
    equations so stiff that RK4 with dt = 10 s is no longer trustworthy; the concentration windows are the
    range of the liquidus, conductivity and bubble correlations.
    """

    min_ledge_mass: float = 500.0  # kg
    alumina_pct: tuple[float, float] = (1.0, 8.0)  # % of bath mass
    alf3_pct: tuple[float, float] = (5.0, 15.0)  # % of bath mass


DEFAULT_PARAMS = CellParams()
DEFAULT_LIMITS = DomainLimits()
