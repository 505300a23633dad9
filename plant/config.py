"""Settings of a simulated potline and of the service that serves it (``deploy/plant.yaml``).

:class:`PlantConfig` is a frozen, validated dataclass that a YAML file fills (``PlantConfig.from_yaml``); its
JSON schema is ``deploy/schemas/plant.schema.json``. The tables a potline's settings refer to live here too: the
line-current profiles and the commands (manipulated inputs with their bounds) clients may send.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from alutwin.config import (
    Config,
    ConfigPath,
    EnvName,
    Host,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    OneOf,
    Port,
    PositiveInt,
    PositiveNumber,
    Token,
    config_dataclass,
)
from alutwin.security import ServerSecurity
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.scenarios import ScenarioEvent, check_cells
from plant.signals import INPUTS, N_STATES, U
from plant.simulator import DT

__all__ = ["COMMANDS", "COMMAND_INDEX", "CURRENT_PROFILES", "CommandSpec", "PlantConfig"]


@dataclass(frozen=True)
class CommandSpec:
    """A manipulated input that clients may take over, with the bounds a command must respect."""

    field: str
    input_index: int
    low: float
    high: float

    @property
    def unit(self) -> str:
        return INPUTS[self.input_index].unit


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("alumina_feed", U.FEED_AL2O3, 0.0, 22.0),
    CommandSpec("alf3_feed", U.FEED_ALF3, 0.0, 10.0),
    CommandSpec("acd", U.ACD, 0.040, 0.060),
)
"""The manipulated inputs in the order of the potline's command columns (``(N, 3)``), NaN = automatic."""

COMMAND_INDEX: dict[str, int] = {c.field: i for i, c in enumerate(COMMANDS)}
"""The column of each command field in :data:`COMMANDS` (and in the potline's command arrays)."""

CURRENT_PROFILES = ("constant", "aprbs")
"""Names of the line-current profiles (:class:`plant.potline.CurrentProfile`)."""

_ACD = COMMANDS[COMMAND_INDEX["acd"]]


def _no_events(value: Any) -> Any:
    return () if value is None else value  # `scenario:` with every entry commented out


@config_dataclass
class PlantConfig(Config, ServerSecurity):
    """Settings of a simulated potline and of the service that serves it.

    Parameters
    ----------
    n_cells : int
        Number of cells (>= 1).
    seed : int
        Seeds the initial states, the "aprbs" current and the measurement noise (>= 0).
    port : int
        TCP port to listen on; 0 picks a free one.
    dt : float
        Sample time, s.
    real_time_factor : float
        Plant seconds per wall-clock second; 0 is stepped mode (time advances only through ``Step``).
    current_profile : str
        Line current: ``"constant"`` (``line_current``) or ``"aprbs"`` (seeded random steps).
    line_current : float
        A; the level of the constant profile.
    acd : float
        m; the anode-cathode distance of a cell whose ACD is not commanded (within the ACD command's bounds).
    noise_std : tuple of 8 float, optional
        Standard deviation of the measurement noise per state (>= 0, same units as the state); None for exact
        measurements.
    min_ledge_mass : float
        kg; a cell whose side ledge falls below this faults (``plant.params.DomainLimits``).
    host : str
        Address to bind; loopback by default.
    max_workers : int
        Threads of the gRPC server; each open stream holds one.
    max_streams : int
        Streams open at once (more are refused with RESOURCE_EXHAUSTED); less than ``max_workers``.
    stream_queue_size : int
        Messages each stream buffers before it drops the oldest.
    max_steps_per_call : int
        Largest ``n`` of one ``Step`` call.
    grace_s : float
        Seconds in-flight calls get to finish when the server stops.
    token : str, optional
        Bearer token of the RPCs that change the plant (``SetInputs``, ``Step``; at least 16 characters).
        Prefer ``token_env``; with neither, those RPCs are open to every client (fine on loopback).
    token_env : str, optional
        Name of an environment variable holding the token.
    tls_cert, tls_key : Path, optional
        PEM certificate chain and private key: serve TLS only (both or neither).
    metrics_port : int, optional
        Port of the Prometheus ``/metrics`` HTTP endpoint on ``metrics_host``; 0 picks a free one; None (the
        default) serves no endpoint.
    metrics_host : str
        Address of the metrics endpoint (loopback by default).
    scenario : tuple of ScenarioEvent
        Drifts and sensor faults (:mod:`plant.scenarios`); in YAML a list of mappings. The cells an event names
        must exist.
    """

    n_cells: PositiveInt
    seed: NonNegativeInt
    port: Port
    dt: PositiveNumber = DT
    real_time_factor: NonNegativeNumber = 0.0
    current_profile: Annotated[str, OneOf(CURRENT_PROFILES)] = "constant"
    line_current: PositiveNumber = 140_000.0
    acd: Annotated[Number, Field(ge=_ACD.low, le=_ACD.high)] = 0.05
    noise_std: Annotated[tuple[NonNegativeNumber, ...], Field(min_length=N_STATES, max_length=N_STATES)] | None = None
    min_ledge_mass: NonNegativeNumber = DEFAULT_LIMITS.min_ledge_mass
    host: Host = "127.0.0.1"
    max_workers: PositiveInt = 16
    max_streams: PositiveInt = 8
    stream_queue_size: PositiveInt = 1000
    max_steps_per_call: PositiveInt = 8640
    grace_s: NonNegativeNumber = 2.0
    token: Token | None = None
    token_env: EnvName | None = None
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    metrics_port: Port | None = None
    metrics_host: Host = "127.0.0.1"
    scenario: Annotated[tuple[ScenarioEvent, ...], BeforeValidator(_no_events)] = ()

    @model_validator(mode="after")
    def _check_together(self) -> PlantConfig:
        problems = check_cells(self.scenario, self.n_cells)
        if self.max_streams >= self.max_workers:
            problems.append(
                f"max_streams ({self.max_streams}) must be less than max_workers ({self.max_workers}), so that "
                "unary calls still find a thread while every stream is open"
            )
        problems += self.security_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def stepped(self) -> bool:
        """True in stepped mode (``real_time_factor == 0``)."""
        return self.real_time_factor == 0

    @property
    def limits(self) -> DomainLimits:
        """The valid domain of the cells."""
        return dataclasses.replace(DEFAULT_LIMITS, min_ledge_mass=float(self.min_ledge_mass))
