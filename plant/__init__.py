"""The Hall-Heroult cell: its equations (numpy and CasADi from one source), a batched simulator with the
cell's own feed controllers and a validity guard, data sets, and a gRPC plant service.

Above only the shared layer ``alutwin``: ``plant`` imports nothing from ``identification``, ``twin``, ``controller``
or ``apps``.
"""

from typing import TYPE_CHECKING

from alutwin.lazy import lazy_exports

if TYPE_CHECKING:
    from plant.excitation import Exogenous, aprbs, constant, oper, sample_initial_states
    from plant.params import DEFAULT_LIMITS, DEFAULT_PARAMS, SPEC_VERSION, CellParams, DomainLimits
    from plant.physics import algebraic, feed_controllers, rhs, rk4_step
    from plant.signals import INPUT_NAMES, INPUTS, N_INPUTS, N_STATES, STATE_NAMES, STATES, U, X
    from plant.simulator import DT, Fault, MeasurementNoise, Trajectories, check_domain, simulate, step

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_PARAMS",
    "DT",
    "INPUTS",
    "INPUT_NAMES",
    "N_INPUTS",
    "N_STATES",
    "SPEC_VERSION",
    "STATES",
    "STATE_NAMES",
    "CellParams",
    "DomainLimits",
    "Exogenous",
    "Fault",
    "MeasurementNoise",
    "Trajectories",
    "U",
    "X",
    "algebraic",
    "aprbs",
    "check_domain",
    "constant",
    "feed_controllers",
    "oper",
    "rhs",
    "rk4_step",
    "sample_initial_states",
    "simulate",
    "step",
]

# imported on first use, so that the commands' parsers (plant.commands) load without numpy and CasADi
__getattr__, __dir__ = lazy_exports(
    __name__,
    __all__,
    {
        "plant.excitation": ("Exogenous", "aprbs", "constant", "oper", "sample_initial_states"),
        "plant.params": ("DEFAULT_LIMITS", "DEFAULT_PARAMS", "SPEC_VERSION", "CellParams", "DomainLimits"),
        "plant.physics": ("algebraic", "feed_controllers", "rhs", "rk4_step"),
        "plant.signals": ("INPUT_NAMES", "INPUTS", "N_INPUTS", "N_STATES", "STATE_NAMES", "STATES", "U", "X"),
        "plant.simulator": ("DT", "Fault", "MeasurementNoise", "Trajectories", "check_domain", "simulate", "step"),
    },
)
