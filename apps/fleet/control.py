"""A potline under NMPC: one controller per cell, hosted by Ray actors (``alutwin control --cells N --ray``).

:class:`RayControllers` is a :class:`controller.closed_loop.ControllerGroup`: ``workers`` Ray actors
(:class:`CellHost`, one CPU each) share the cells out; each actor holds, per cell, the twin's model of that cell
(:class:`controller.models.TwinModel` on ``cell-017``, alias ``champion``), its compiled NMPC with its warm start
and offset-free bias, and its safety layer, for the whole run. Each interval the loop sends every actor the
measurements of its cells in one call, and the actors solve in parallel, one cell after another each. A cell
whose solve fails falls back alone (its safety layer); the other cells are not touched.

Cells whose models have the same dynamics share one built problem inside an actor
(:data:`controller.mpc.SHARED_PROBLEMS`): a potline started from one champion builds it once per actor. Each
actor watches the twin's registry with one stream for all its cells and passes the events on
(:meth:`TwinModel.notice`), so a swap of one cell's model is taken up before that cell's next solve.

:func:`run_potline` is the whole run: the plant service (started here with ``n_cells`` cells, or elsewhere), the
twin (started here with every cell's model registered from one model folder, or elsewhere, where
``alutwin fleet fit`` registered them), the actors, :func:`controller.closed_loop.run_cells`, and the report
(:func:`controller.potline_report.write_potline_report`).

Ray is the ``fleet`` extra; without it :func:`ray_module` says how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np

from apps.fleet import cell_name
from apps.runner import Remote, ServiceError
from controller.closed_loop import (
    CellRecord,
    ControllerGroup,
    Observed,
    Request,
    Scenario,
    Trace,
    operating_initial_state,
    run_cells,
)
from controller.config import MPCConfig, SafetyConfig
from controller.models import TwinModel
from controller.mpc import NMPC
from controller.plantlink import GrpcPlant
from controller.safety import Decision, SafeController
from plant.client import PlantClient
from plant.config import PlantConfig
from plant.potline import Potline
from plant.service import create_server as create_plant_server
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.serving import create_server as create_twin_server

__all__ = [
    "CellHost",
    "PotlineConfig",
    "RayControllers",
    "potline_initial_states",
    "ray_module",
    "run_potline",
]

log = logging.getLogger(__name__)

ALIAS = "champion"


def ray_module() -> ModuleType:
    """The ``ray`` package, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--ray needs Ray, the 'fleet' extra: pip install 'alutwin[fleet]' (or pip install 'ray>=2.40')"
        ) from None
    return ray


def start_ray(address: str | None, workers: int) -> bool:
    """Join the Ray at ``address`` (``"auto"``: the cluster of this machine) or start a local one of ``workers``
    CPUs. Returns True when this call started or joined it (and so should shut it down)."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return True


class CellHost:
    """The controllers of some cells of a potline, in one process (the body of a Ray actor).

    Parameters
    ----------
    twin : Remote
        The twin serving each cell's model.
    cells : mapping of cell index -> model name
        The cells this host controls.
    mpc, safety : the NMPC and safety settings (the same for every cell).
    fail_solves : mapping of cell index -> solve numbers (0-based) to treat as failed (tests, drills).
    alias : the alias each cell's NMPC follows.
    """

    def __init__(
        self,
        twin: Remote,
        cells: Mapping[int, str],
        mpc: MPCConfig,
        safety: SafetyConfig,
        fail_solves: Mapping[int, Sequence[int]] | None = None,
        alias: str = ALIAS,
    ) -> None:
        t0 = time.perf_counter()
        self.client = TwinClient(twin.address, token=twin.token, root_certificates=twin.root_certificates, timeout=60)
        self.models: dict[int, TwinModel] = {}
        self.controllers: dict[int, SafeController] = {}
        self.build_s: dict[int, float] = {}
        fail = {int(c): frozenset(int(k) for k in ks) for c, ks in (fail_solves or {}).items()}
        for cell, name in cells.items():
            t1 = time.perf_counter()
            model = TwinModel(self.client, name, alias=alias, watch=False)
            self.models[cell] = model
            failing = fail.get(cell, frozenset())
            inject = (lambda k, f=failing: k in f) if failing else None
            self.controllers[cell] = SafeController(NMPC(model, mpc), safety, inject_failure=inject)
            self.build_s[cell] = time.perf_counter() - t1
        self.setup_s = time.perf_counter() - t0
        self._stop = threading.Event()
        self._stream = self.client.watch()
        self._watcher = threading.Thread(target=self._watch, name="potline-host-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        try:
            for event in self._stream:
                if self._stop.is_set():
                    return
                for model in self.models.values():
                    model.notice(event)
        except Exception as exc:
            if not self._stop.is_set():
                log.warning("the twin's watch stream ended: %s", exc)

    def info(self) -> dict[str, Any]:
        """Where this host runs and what building its cells took."""
        return {"pid": os.getpid(), "cells": sorted(self.controllers), "setup_s": self.setup_s, "build_s": self.build_s}

    def memory(self) -> dict[str, float]:
        """This process's resident memory now and at its peak, MiB (``VmRSS``, ``VmHWM`` of /proc; Linux)."""
        out = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out["rss_mib" if key == "VmRSS" else "peak_mib"] = int(value.split()[0]) / 1024.0
        return out

    def decide(self, requests: Mapping[int, Request]) -> dict[int, Decision]:
        """Each cell's decision, one cell after another."""
        return {
            cell: self.controllers[cell].decide(r.y, r.current, r.v_prev, r.acd_prev, step=r.step)
            for cell, r in requests.items()
        }

    def observe(self, observed: Mapping[int, Observed]) -> None:
        for cell, o in observed.items():
            self.controllers[cell].mpc.observe(o.y_start, o.v_mean, o.current, o.y_end)

    def records(self) -> dict[int, CellRecord]:
        out = {}
        for cell, c in self.controllers.items():
            model = {**self.models[cell].describe(), **c.mpc.describe_problem(), "host_pid": os.getpid()}
            out[cell] = CellRecord(list(c.plans), c.summary(), model)
        return out

    def close(self) -> None:
        self._stop.set()
        self._stream.cancel()
        self._watcher.join(timeout=5.0)
        for cell, c in self.controllers.items():
            c.mpc.close()
            self.models[cell].close()
        self.client.close()


class RayControllers(ControllerGroup):
    """One NMPC per cell on ``workers`` Ray actors (:class:`CellHost`), cells dealt out in contiguous blocks.

    Parameters
    ----------
    twin : Remote
        The twin serving the cells' models.
    models : sequence of str
        The model name of each cell (index = position in the loop).
    mpc, safety : the settings of every cell's controller.
    workers : int
        Actors (one CPU each).
    fail_solves : mapping cell index -> solve numbers treated as failed (tests, drills).
    """

    def __init__(
        self,
        twin: Remote,
        models: Sequence[str],
        mpc: MPCConfig,
        safety: SafetyConfig,
        *,
        workers: int,
        fail_solves: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if not models:
            raise ValueError("RayControllers needs at least one cell")
        ray = ray_module()
        self.n = len(models)
        n_hosts = min(workers, self.n)
        blocks = np.array_split(np.arange(self.n), n_hosts)
        self.host_of = {int(c): h for h, block in enumerate(blocks) for c in block}
        actor = ray.remote(num_cpus=1, max_concurrency=1)(CellHost)
        fail = dict(fail_solves or {})
        self.hosts = [
            actor.remote(
                twin,
                {int(c): models[int(c)] for c in block},
                mpc,
                safety,
                {int(c): fail[int(c)] for c in block if int(c) in fail},
            )
            for block in blocks
        ]
        t0 = time.perf_counter()
        self.host_info = self._get([h.info.remote() for h in self.hosts])
        self.setup_s = time.perf_counter() - t0
        log.info("%d cells on %d Ray actors, built in %.1f s", self.n, n_hosts, self.setup_s)

    def _get(self, refs: list[Any]) -> list[Any]:
        ray = ray_module()
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"a potline host (Ray actor) died: {exc}") from None
        except ray.exceptions.RayTaskError as exc:
            raise RuntimeError(f"a potline host failed: {exc.cause!r}") from None

    def _split(self, items: Mapping[int, Any]) -> list[dict[int, Any]]:
        parts: list[dict[int, Any]] = [{} for _ in self.hosts]
        for cell, item in items.items():
            parts[self.host_of[cell]][cell] = item
        return parts

    def active(self) -> list[bool]:
        return [True] * self.n

    def decide(self, requests: Mapping[int, Request]) -> dict[int, Decision]:
        parts = self._split(requests)
        refs = [h.decide.remote(p) for h, p in zip(self.hosts, parts, strict=True) if p]
        out: dict[int, Decision] = {}
        for part in self._get(refs):
            out.update(part)
        return out

    def observe(self, observed: Mapping[int, Observed]) -> None:
        parts = self._split(observed)
        self._get([h.observe.remote(p) for h, p in zip(self.hosts, parts, strict=True) if p])

    def memory(self) -> list[dict[str, float]]:
        """Each host's resident memory now and at its peak, MiB."""
        return self._get([h.memory.remote() for h in self.hosts])

    def records(self) -> list[CellRecord | None]:
        merged: dict[int, CellRecord] = {}
        for part in self._get([h.records.remote() for h in self.hosts]):
            merged.update(part)
        return [merged.get(i) for i in range(self.n)]

    def close(self) -> None:
        """Stop the hosts (their NMPCs, model watches and twin connections)."""
        ray = ray_module()
        with contextlib.suppress(Exception):
            ray.get([h.close.remote() for h in self.hosts], timeout=30)
        for h in self.hosts:
            with contextlib.suppress(Exception):
                ray.kill(h)
        self.hosts = []


@dataclass(frozen=True)
class PotlineConfig:
    """A potline run of ``alutwin control --ray``.

    Parameters
    ----------
    cells : the plant's cells to control (indices; a plant started here has ``max(cells) + 1`` cells).
    hours : plant time.
    seed : the plant's seed (current profile, noise) and the cells' initial states, for a plant started here.
    mpc, safety : every cell's NMPC and safety settings.
    workers : Ray actors (default: the CPUs of this machine).
    ray_address : join this Ray cluster (``"auto"``: the one of this machine) instead of starting a local one.
    twin, plant : services elsewhere (None: started here on loopback).
    models_dir : with no twin elsewhere, the model folder registered as every cell's model.
    fail_solves : mapping cell index -> solve numbers treated as failed (tests, drills).
    progress : show a progress bar.
    """

    cells: tuple[int, ...]
    hours: float
    seed: int = 0
    mpc: MPCConfig = field(default_factory=MPCConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    workers: int | None = None
    ray_address: str | None = None
    twin: Remote | None = None
    plant: Remote | None = None
    models_dir: Path | None = None
    fail_solves: Mapping[int, Sequence[int]] = field(default_factory=dict)
    progress: bool = False

    def __post_init__(self) -> None:
        cells = self.cells
        if not cells or len(set(cells)) != len(cells) or min(cells) < 0:
            raise ValueError(f"cells must be distinct indices >= 0, got {cells!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.twin is None and self.models_dir is None:
            raise ValueError("a potline run needs a twin elsewhere (twin) or a model folder to serve (models_dir)")
        unknown = sorted(set(self.fail_solves) - set(range(len(cells))))
        if unknown:
            raise ValueError(f"fail_solves names cells {unknown} that are not in the run (0-{len(cells) - 1})")

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)


def potline_initial_states(seed: int, n_cells: int) -> np.ndarray:
    """``(n_cells, 8)`` initial states, each a cell in normal operation
    (:func:`controller.closed_loop.operating_initial_state`), drawn from ``seed`` and the cell's index."""
    seeds = np.random.SeedSequence(seed).generate_state(n_cells)  # (n_cells,) uint32, one per cell
    return np.stack([operating_initial_state(int(s)) for s in seeds])


@contextlib.contextmanager
def _local_plant(config: PotlineConfig) -> Iterator[Remote]:
    """A stepped plant service of the run's cells on 127.0.0.1, each cell from its own operating state."""
    n = max(config.cells) + 1
    plant_config = PlantConfig(n_cells=n, seed=config.seed, port=0, current_profile="aprbs", grace_s=0.0)
    potline = Potline.from_config(plant_config, x0=potline_initial_states(config.seed, n))
    server, _ = create_plant_server(plant_config, potline=potline)
    server.start()
    try:
        yield Remote(server.address)
    finally:
        server.stop(0)


@contextlib.contextmanager
def _local_twin(models_dir: Path, names: Sequence[str]) -> Iterator[Remote]:
    """A twin on 127.0.0.1 over a temporary store, ``models_dir`` registered under every name, alias champion."""
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="alutwin-potline-") as tmp:
        server, _ = create_twin_server(TwinConfig(store=Path(tmp) / "store", port=0, token=token, grace_s=0.0))
        server.start()
        try:
            remote = Remote(server.address, token=token)
            with TwinClient(remote.address, token=token) as client:
                for name in names:
                    client.register(name, models_dir, set_alias=ALIAS)
            yield remote
        finally:
            server.stop(0)


def _check_models(twin: Remote, names: Sequence[str]) -> None:
    """Check that the twin elsewhere serves every cell's model (alias champion), naming the missing ones."""
    missing: list[str] = []
    with TwinClient(twin.address, token=twin.token, root_certificates=twin.root_certificates, timeout=60) as client:
        for name in names:
            try:
                client.get_model(name, alias=ALIAS)
            except grpc.RpcError as exc:
                if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.NOT_FOUND:
                    code = exc.code().name if isinstance(exc, grpc.Call) else "error"
                    raise ServiceError(f"the twin at {twin.address}: {code}") from exc
                missing.append(name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"the twin at {twin.address} does not serve {shown} (alias {ALIAS}): register the cells' models first, "
            f"e.g. alutwin fleet fit --cells {len(names)} --twin {twin.address}"
        )


def run_potline(config: PotlineConfig, *, timings: list[dict[str, float]] | None = None) -> tuple[list[Trace], dict]:
    """Run every cell of ``config`` under its own NMPC, hosted by Ray actors, against one plant.

    Returns
    -------
    (traces, run) : one Trace per cell (``controller`` is the cell's model name), and what the run was
        (plant, twin, Ray hosts and their build times, wall times).

    Raises
    ------
    ValueError
        A bad setting, Ray missing, or a plant without the cells.
    ServiceError
        A call to the twin or the plant failed.
    """
    names = [cell_name(c) for c in config.cells]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if start_ray(config.ray_address, config.n_workers):  # before any gRPC thread: Ray forks its processes
            stack.callback(ray_module().shutdown)
        plant = config.plant or stack.enter_context(_local_plant(config))
        if config.twin is None:
            assert config.models_dir is not None  # checked by PotlineConfig
            twin = stack.enter_context(_local_twin(config.models_dir, names))
        else:
            twin = config.twin
            _check_models(twin, names)
        client = stack.enter_context(
            PlantClient(plant.address, token=plant.token, root_certificates=plant.root_certificates, timeout=60)
        )
        info = client.info()
        outside = [c for c in config.cells if c >= info.n_cells]
        if outside:
            raise ValueError(
                f"cell {outside[0]} is out of range: the plant at {plant.address} has {info.n_cells} cells"
            )
        try:
            group = RayControllers(
                twin, names, config.mpc, config.safety, workers=config.n_workers, fail_solves=config.fail_solves
            )
        except RuntimeError as exc:
            raise ServiceError(f"building the cells' controllers failed: {exc}") from None
        stack.callback(group.close)
        setup_s = time.perf_counter() - t0
        links = GrpcPlant.for_cells(client, config.cells)
        stack.callback(links[0].close)  # the links share one clock
        scenario = Scenario(hours=config.hours, seed=config.seed)
        traces = run_cells(
            links,
            group,
            scenario.n_steps,
            interval_steps=config.mpc.interval_steps,
            names=names,
            scenario=scenario,
            watchdog_s=config.safety.watchdog_s,
            progress=config.progress,
            timings=timings,
        )
        run = {
            "plant": {**plant.describe(), "started_here": config.plant is None, "n_cells": info.n_cells},
            "twin": {**twin.describe(), "started_here": config.twin is None},
            "ray": {
                "address": config.ray_address or "local",
                "workers": len(group.hosts),
                "hosts": group.host_info,
                "setup_s": group.setup_s,
                "memory": group.memory(),
            },
            "setup_s": setup_s,
            "wall_s": time.perf_counter() - t0,
        }
    for trace, name in zip(traces, names, strict=True):
        trace.controller = name
    return traces, run
