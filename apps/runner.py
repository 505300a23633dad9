"""The whole system on loopback: a plant service and a twin started here, every controller on every scenario.

:func:`run_system` starts the twin (a temporary store seeded with the committed surrogates) when a surrogate
controller is asked for, builds one NMPC per model, and runs :func:`controller.closed_loop.run_loop` for each
scenario and controller against a fresh plant (service or in-process). Everything is shut down on return.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.closed_loop import CONTROLLERS, DEFAULT_MODELS, SURROGATE_DIRS, Scenario, Trace, run_loop
from controller.config import MPCConfig, SafetyConfig
from controller.models import ModelSource, OracleModel, TwinModel
from controller.mpc import NMPC
from controller.plantlink import GrpcPlant, LocalPlant, PlantLink
from controller.safety import SafeController
from plant.client import PlantClient
from plant.service import create_server as create_plant_server
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.serving import create_server as create_twin_server

__all__ = ["SystemConfig", "plant_service", "run_system", "twin_service"]

log = logging.getLogger(__name__)


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
    """

    scenarios: tuple[Scenario, ...]
    controllers: tuple[str, ...] = CONTROLLERS
    mpc: MPCConfig = field(default_factory=MPCConfig)
    mpc_by_controller: Mapping[str, MPCConfig] = field(default_factory=dict)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    models_dir: Path = DEFAULT_MODELS
    in_process: bool = False
    progress: bool = True

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
        models = Path(self.models_dir)
        object.__setattr__(self, "models_dir", models)
        for c in names:
            if c in SURROGATE_DIRS and not (models / SURROGATE_DIRS[c]).is_dir():
                raise ValueError(
                    f"SystemConfig.models_dir: controller {c!r} needs the model directory "
                    f"{models / SURROGATE_DIRS[c]}, which does not exist"
                )

    def mpc_of(self, controller: str) -> MPCConfig:
        """The NMPC settings of ``controller``."""
        return self.mpc_by_controller.get(controller, self.mpc)


@contextlib.contextmanager
def twin_service(models_dir: Path, names: Sequence[str]) -> Iterator[TwinClient]:
    """A twin on 127.0.0.1 (port 0, temporary store) serving ``cell-<name>`` for each surrogate ``name``
    (its ``champion`` the committed model of :data:`SURROGATE_DIRS`); yields a client with the token."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="alutwin-control-twin-") as store:
        server, _ = create_twin_server(TwinConfig(store=Path(store), port=0, token=token, grace_s=0.0))
        server.start()
        client = TwinClient(server.address, token=token, timeout=60.0)
        try:
            for name in names:
                client.register(f"cell-{name}", models_dir / SURROGATE_DIRS[name], set_alias="champion")
            yield client
        finally:
            client.close()
            server.stop(0)


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
    return TwinModel(twin, f"cell-{name}")


def run_system(
    config: SystemConfig,
    *,
    on_trace: Callable[[Trace], None] | None = None,
) -> list[Trace]:
    """Run every controller of ``config`` on every scenario, the whole system on loopback.

    Starts the twin (temporary store, seeded with the committed surrogates) when a surrogate controller is
    asked for, builds one NMPC per model (reused over the scenarios), and for each scenario and controller
    a fresh plant (service or in-process) from the scenario's seed. Everything is shut down on return.

    Returns
    -------
    list of Trace, scenario-major.
    """
    surrogates = [c for c in config.controllers if c in SURROGATE_DIRS]
    traces: list[Trace] = []
    with contextlib.ExitStack() as stack:
        twin = stack.enter_context(twin_service(config.models_dir, surrogates)) if surrogates else None
        mpcs: dict[str, NMPC] = {}
        for name in config.controllers:
            if name == "baseline":
                continue
            model = _model_source(name, twin)
            stack.callback(model.close)
            t0 = time.perf_counter()
            mpcs[name] = NMPC(model, config.mpc_of(name))
            log.info("NMPC %s built in %.1f s", name, time.perf_counter() - t0)
        for scenario in config.scenarios:
            for name in config.controllers:
                controller = None
                if name in mpcs:
                    mpcs[name].reset()
                    controller = SafeController(mpcs[name], config.safety)
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
                if name in mpcs:
                    trace.model = {**mpcs[name].model.describe(), **mpcs[name].describe_problem()}
                traces.append(trace)
                if on_trace is not None:
                    on_trace(trace)
    return traces
