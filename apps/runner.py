"""The whole system: a plant service and a twin started here on loopback, or ones that run elsewhere.

:func:`run_system` starts the twin (a temporary store seeded with the committed surrogates) when a surrogate
controller is asked for, builds one NMPC per model, and runs :func:`controller.closed_loop.run_loop` for each
scenario and controller against a fresh plant (service or in-process). Everything is shut down on return.

With :attr:`SystemConfig.twin` the surrogate controllers use the models a twin elsewhere serves
(:data:`controller.closed_loop.TWIN_MODELS`, alias ``champion``); with :attr:`SystemConfig.plant` the
controllers run together on cells of a plant service elsewhere, one controller per cell, on the plant's own
scenario (:func:`controller.closed_loop.run_cells`: a stepped plant is stepped by the loop, a real-time plant
is followed on its own clock).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from controller.closed_loop import (
    CONTROLLERS,
    DEFAULT_MODELS,
    SURROGATE_DIRS,
    TWIN_MODELS,
    Scenario,
    Trace,
    run_cells,
    run_loop,
)
from controller.config import MPCConfig, SafetyConfig
from controller.models import ModelSource, OracleModel, TwinModel
from controller.mpc import NMPC
from controller.plantlink import GrpcPlant, LocalPlant, PlantLink
from controller.safety import SafeController
from plant.client import PlantClient
from plant.service import create_server as create_plant_server
from plant.simulator import DT
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.serving import create_server as create_twin_server

__all__ = [
    "Remote",
    "ServiceError",
    "SystemConfig",
    "check_twin_models",
    "plant_service",
    "remote_twin",
    "run_system",
    "twin_service",
]

log = logging.getLogger(__name__)

_TIMEOUT_S = 60.0  # deadline of each call to the twin and the plant
_ALIAS = "champion"  # the twin's alias the surrogate controllers follow
_Client = TypeVar("_Client", TwinClient, PlantClient)


class ServiceError(RuntimeError):
    """A call to a twin or a plant that runs elsewhere failed (the message names the service and the gRPC status)."""


@dataclass(frozen=True)
class Remote:
    """A twin or a plant service that runs elsewhere, and how to call it.

    Parameters
    ----------
    address : str
        ``host:port`` (``[v6 address]:port`` for IPv6), or a gRPC ``unix:PATH`` target.
    token : str, optional
        Bearer token sent with the calls that need one (kept out of reprs and reports).
    root_certificates : bytes, optional
        PEM roots to trust: connect with TLS (the server's certificate must name the host of ``address``).
    """

    address: str
    token: str | None = field(default=None, repr=False)
    root_certificates: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        a = self.address
        host, sep, port = a.rpartition(":") if isinstance(a, str) else ("", "", "")
        unix = isinstance(a, str) and a.startswith("unix:")
        if not unix and not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"address must be 'host:port' with a port in 1-65535 (or 'unix:PATH'), got {a!r}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("Remote.token must be a non-empty string or None")
        if self.root_certificates is not None and not isinstance(self.root_certificates, bytes):
            raise ValueError(f"Remote.root_certificates must be PEM bytes or None, got {type(self.root_certificates)}")

    def describe(self) -> dict[str, Any]:
        """Where the service is and how it was called (no secrets), for the report."""
        return {"address": self.address, "tls": self.root_certificates is not None, "token": self.token is not None}


@dataclass(frozen=True)
class SystemConfig:
    """What :func:`run_system` runs.

    Parameters
    ----------
    scenarios : tuple of Scenario
        The seeded scenarios; every controller runs on each.
    controllers : tuple of str
        Names from :data:`CONTROLLERS`.
    mpc : MPCConfig
        The NMPC settings of every model not named in ``mpc_by_controller``.
    mpc_by_controller : mapping of str to MPCConfig
        Settings of particular controllers (e.g. a longer solver time limit for the dense surrogate's NMPC,
        whose iterations cost several times more); the others use ``mpc``. Every config must have the same
        ``interval_steps`` (the controllers run the same scenario in the same intervals).
    safety : SafetyConfig
        The safety layer's settings.
    models_dir : Path
        Folder holding the ``sparse-inputskip`` and ``dense`` model directories the twin is seeded with.
    in_process : bool
        Run the plant in-process (``Potline``) instead of through the plant service (the twin is always a
        service).
    progress : bool
        Progress bars.
    twin : Remote, optional
        A twin elsewhere that serves the surrogate controllers' models (:data:`TWIN_MODELS`, alias
        ``champion``); None starts one on loopback from ``models_dir``.
    plant : Remote, optional
        A plant service elsewhere; None starts a fresh plant per scenario and controller. With one, the run is
        the plant's own scenario (its seed, current profile and cells, from its present step on): a single
        scenario whose ``hours`` is how long the controllers run, listed as seed 0 in the report.
    cells : tuple of int
        With ``plant``: the cell of each controller, in the order of ``controllers`` (the controllers run
        together, one per cell).
    """

    scenarios: tuple[Scenario, ...]
    controllers: tuple[str, ...] = CONTROLLERS
    mpc: MPCConfig = field(default_factory=MPCConfig)
    mpc_by_controller: Mapping[str, MPCConfig] = field(default_factory=dict)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    models_dir: Path = DEFAULT_MODELS
    in_process: bool = False
    progress: bool = True
    twin: Remote | None = None
    plant: Remote | None = None
    cells: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if not self.scenarios or not all(isinstance(s, Scenario) for s in self.scenarios):
            raise ValueError(f"SystemConfig.scenarios must be a non-empty tuple of Scenario, got {self.scenarios!r}")
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        names = tuple(self.controllers)
        unknown = [c for c in names if c not in CONTROLLERS]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(
                f"SystemConfig.controllers must be distinct names from {list(CONTROLLERS)}, got {list(names)}"
            )
        object.__setattr__(self, "controllers", names)
        if not isinstance(self.mpc, MPCConfig) or not isinstance(self.safety, SafetyConfig):
            raise ValueError("SystemConfig.mpc must be an MPCConfig and SystemConfig.safety a SafetyConfig")
        by = dict(self.mpc_by_controller)
        for c, cfg in by.items():
            if c not in names or c == "baseline":
                raise ValueError(f"SystemConfig.mpc_by_controller: {c!r} is not one of this run's NMPC controllers")
            if not isinstance(cfg, MPCConfig):
                raise ValueError(f"SystemConfig.mpc_by_controller[{c!r}] must be an MPCConfig")
            if cfg.interval_steps != self.mpc.interval_steps:
                raise ValueError(
                    f"SystemConfig.mpc_by_controller[{c!r}].interval_steps ({cfg.interval_steps}) must equal "
                    f"mpc.interval_steps ({self.mpc.interval_steps})"
                )
        object.__setattr__(self, "mpc_by_controller", by)
        for key in ("twin", "plant"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Remote):
                raise ValueError(f"SystemConfig.{key} must be a Remote or None, got {value!r}")
        self._check_cells(names)
        models = Path(self.models_dir)
        object.__setattr__(self, "models_dir", models)
        for c in names:
            if self.twin is None and c in SURROGATE_DIRS and not (models / SURROGATE_DIRS[c]).is_dir():
                raise ValueError(
                    f"SystemConfig.models_dir: controller {c!r} needs the model directory "
                    f"{models / SURROGATE_DIRS[c]}, which does not exist"
                )

    def _check_cells(self, names: tuple[str, ...]) -> None:
        cells = tuple(self.cells)
        object.__setattr__(self, "cells", cells)
        if self.plant is None:
            if cells != (0,):
                raise ValueError(
                    f"SystemConfig.cells ({list(cells)}) names cells of a remote plant: give SystemConfig.plant, "
                    "or leave cells at (0,)"
                )
            return
        if self.in_process:
            raise ValueError("SystemConfig.in_process runs a plant here: it cannot be combined with SystemConfig.plant")
        if len(self.scenarios) != 1:
            raise ValueError(
                f"SystemConfig.scenarios: a remote plant runs its own scenario; give one Scenario (its hours), "
                f"got {len(self.scenarios)}"
            )
        ints = all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cells)
        if not ints or len(set(cells)) != len(cells) or len(cells) != len(names):
            raise ValueError(
                f"SystemConfig.cells must name one distinct cell (an integer >= 0) per controller "
                f"({len(names)}: {', '.join(names)}), got {list(cells)}"
            )

    def mpc_of(self, controller: str) -> MPCConfig:
        """The NMPC settings of ``controller``."""
        return self.mpc_by_controller.get(controller, self.mpc)


@contextlib.contextmanager
def twin_service(models_dir: Path, names: Sequence[str]) -> Iterator[TwinClient]:
    """A twin on 127.0.0.1 (port 0, temporary store) serving :data:`TWIN_MODELS` of each surrogate ``name``
    (its ``champion`` the committed model of :data:`SURROGATE_DIRS`); yields a client with the token."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="alutwin-control-twin-") as store:
        server, _ = create_twin_server(TwinConfig(store=Path(store), port=0, token=token, grace_s=0.0))
        server.start()
        client = TwinClient(server.address, token=token, timeout=_TIMEOUT_S)
        try:
            for name in names:
                client.register(TWIN_MODELS[name], models_dir / SURROGATE_DIRS[name], set_alias=_ALIAS)
            yield client
        finally:
            client.close()
            server.stop(0)


@contextlib.contextmanager
def _calling(service: str, remote: Remote | None) -> Iterator[None]:
    """Turn a failed call to a remote service into one line naming it (:class:`ServiceError`)."""
    try:
        yield
    except grpc.RpcError as exc:
        if remote is None or not isinstance(exc, grpc.Call):
            raise
        raise ServiceError(f"the {service} at {remote.address}: {exc.code().name}: {exc.details()}") from exc


def check_twin_models(client: TwinClient, names: Sequence[str]) -> None:
    """Check that the twin behind ``client`` serves the model (alias ``champion``) of each surrogate controller
    in ``names``.

    Raises
    ------
    ValueError
        Naming every model the twin lacks, and how to register it.
    grpc.RpcError
        The twin cannot be called.
    """
    missing: list[str] = []
    for name in names:
        try:
            client.get_model(TWIN_MODELS[name], alias=_ALIAS)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            missing.append(name)
    if missing:
        what = ", ".join(f"{TWIN_MODELS[n]}@{_ALIAS} (controller {n!r})" for n in missing)
        hint = f"alutwin twin register --name {TWIN_MODELS[missing[0]]} --model DIR --alias {_ALIAS}"
        raise ValueError(f"the twin at {client.address} does not serve {what}; register it ({hint})")


@contextlib.contextmanager
def _connected(
    service: str, make: Callable[..., _Client], remote: Remote, check: Callable[[_Client], None]
) -> Iterator[_Client]:
    """A client (``make``) of the twin or plant at ``remote``, checked by ``check`` before use."""
    client = make(remote.address, token=remote.token, root_certificates=remote.root_certificates, timeout=_TIMEOUT_S)
    try:
        with _calling(service, remote):
            check(client)
        yield client
    finally:
        client.close()


def remote_twin(remote: Remote, names: Sequence[str]) -> contextlib.AbstractContextManager[TwinClient]:
    """A client of the twin at ``remote`` (as a context manager), checked to serve the models of the surrogate
    controllers ``names`` (:func:`check_twin_models`)."""
    return _connected("twin", TwinClient, remote, lambda client: check_twin_models(client, names))


@contextlib.contextmanager
def plant_service(scenario: Scenario, in_process: bool) -> Iterator[PlantLink]:
    """The scenario's plant: in-process, or a plant service on 127.0.0.1 (port 0) and a link through its client."""
    if in_process:
        yield LocalPlant(scenario.potline())
        return
    server, _ = create_plant_server(scenario.plant_config(), potline=scenario.potline())
    server.start()
    client = PlantClient(server.address, timeout=60.0)
    try:
        yield GrpcPlant(client)
    finally:
        client.close()
        server.stop(0)


def _model_source(name: str, twin: TwinClient | None) -> ModelSource:
    if name == "oracle":
        return OracleModel()
    if twin is None:
        raise ValueError(f"controller {name!r} needs the twin")
    return TwinModel(twin, TWIN_MODELS[name], alias=_ALIAS)


def _controller(mpc: NMPC | None, safety: SafetyConfig) -> SafeController | None:
    """A fresh run of ``mpc`` behind its safety layer (None for the baseline)."""
    if mpc is None:
        return None
    mpc.reset()
    return SafeController(mpc, safety)


def _check_plant(config: SystemConfig, client: PlantClient) -> None:
    info = client.info()
    address = client.address
    outside = [c for c in config.cells if c >= info.n_cells]
    if outside:
        raise ValueError(
            f"cell {outside[0]} of cells {list(config.cells)} is out of range: the plant at {address} has "
            f"{info.n_cells} cell{'s' if info.n_cells != 1 else ''} (0-{info.n_cells - 1})"
        )
    if not math.isclose(info.dt, DT):
        raise ValueError(f"the plant at {address} steps {info.dt:g} s; the controllers assume steps of {DT:g} s")
    clock = "stepped" if info.stepped else f"real time x{info.real_time_factor:g}"
    log.info(
        "plant at %s: %d cells, %s, step %d, current %s", address, info.n_cells, clock, info.step, info.current_profile
    )


def _run_remote_plant(config: SystemConfig, client: PlantClient, mpcs: Mapping[str, NMPC]) -> list[Trace]:
    """Every controller at once, each on its cell of the plant behind ``client``."""
    with _calling("plant", config.plant):
        links = GrpcPlant.for_cells(client, config.cells)
        try:
            controllers = [_controller(mpcs.get(name), config.safety) for name in config.controllers]
            noise = client.info().noise_std is not None
            scenario = Scenario(hours=config.scenarios[0].hours, seed=0, noise=noise)
            traces = run_cells(
                links,
                controllers,
                scenario.n_steps,
                interval_steps=config.mpc.interval_steps,
                names=[f"{n} (cell {c})" for n, c in zip(config.controllers, config.cells, strict=True)],
                scenario=scenario,
                watchdog_s=config.safety.watchdog_s,
                progress=config.progress,
            )
        finally:
            links[0].close()  # the links share one clock
    for trace, name in zip(traces, config.controllers, strict=True):
        trace.controller = name
    return traces


def run_system(
    config: SystemConfig,
    *,
    on_trace: Callable[[Trace], None] | None = None,
) -> list[Trace]:
    """Run every controller of ``config`` on every scenario.

    Starts the twin (temporary store, seeded with the committed surrogates) when a surrogate controller is
    asked for, or connects to ``config.twin``, and builds one NMPC per model (reused over the scenarios). Then
    for each scenario and controller a fresh plant (service or in-process) from the scenario's seed; or, with
    ``config.plant``, every controller at once on its cell of that plant. Everything started here is shut down
    on return; remote cells are handed back to their own controllers.

    Returns
    -------
    list of Trace, scenario-major (with a remote plant: one per controller).

    Raises
    ------
    ValueError
        The remote twin lacks a model, or the remote plant lacks a cell.
    ServiceError
        A call to a remote twin or plant failed (naming the service and the gRPC status).
    """
    surrogates = [c for c in config.controllers if c in SURROGATE_DIRS]
    traces: list[Trace] = []
    with contextlib.ExitStack() as stack:
        remote = None
        if config.plant is not None:  # checked first: a missing cell is reported before any NMPC is built
            check = functools.partial(_check_plant, config)
            remote = stack.enter_context(_connected("plant", PlantClient, config.plant, check))
        twin = None
        if surrogates and config.twin is None:
            twin = stack.enter_context(twin_service(config.models_dir, surrogates))
        elif surrogates and config.twin is not None:
            twin = stack.enter_context(remote_twin(config.twin, surrogates))
        mpcs: dict[str, NMPC] = {}
        for name in config.controllers:
            if name == "baseline":
                continue
            with _calling("twin", config.twin):
                model = _model_source(name, twin)
            stack.callback(model.close)
            t0 = time.perf_counter()
            mpcs[name] = NMPC(model, config.mpc_of(name))
            log.info("NMPC %s built in %.1f s", name, time.perf_counter() - t0)

        def finish(trace: Trace) -> None:
            if trace.controller in mpcs:
                mpc = mpcs[trace.controller]
                trace.model = {**mpc.model.describe(), **mpc.describe_problem()}
            traces.append(trace)
            if on_trace is not None:
                on_trace(trace)

        if remote is not None:
            for trace in _run_remote_plant(config, remote, mpcs):
                finish(trace)
        else:
            for scenario in config.scenarios:
                for name in config.controllers:
                    controller = _controller(mpcs.get(name), config.safety)
                    with plant_service(scenario, config.in_process) as plant:
                        trace = run_loop(
                            plant,
                            controller,
                            scenario.n_steps,
                            interval_steps=config.mpc.interval_steps,
                            name=f"{name} (seed {scenario.seed})",
                            scenario=scenario,
                            watchdog_s=config.safety.watchdog_s,
                            progress=config.progress,
                        )
                    trace.controller = name
                    finish(trace)
    return traces
