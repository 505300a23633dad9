"""The online re-fit worker: the twin learns from the running plant, and only ever gets better.

Every ``every_samples`` new samples or ``every_plant_s`` of plant time (whichever comes first) the worker

1. reads each cell's recent samples from the historian (the SQLite file the twin's Ingest service writes, WAL
   letting this process read while the twin writes; or the twin's PostgreSQL database),
2. screens them for sensor faults with the champion (:func:`identification.online.screen`); a cell's data
   from a suspected stuck or offset sensor on is left out, and the fault stays latched in the worker's state,
3. holds out the last ``holdout_s`` of every cell and fits a challenger on the ``replay_s`` before it
   (:func:`identification.online.refit`, a warm start inside the champion's sparsity pattern by default),
4. scores champion and challenger by 1-hour-ahead rollout error on the held-out window
   (:func:`identification.online.evaluate`) and lets the :class:`~identification.online.Gate` decide,
5. registers the challenger through :class:`twin.client.TwinClient` and, if the gate passed, moves the alias
   ``champion`` with a compare-and-set (``expected_version`` = the champion it beat): a champion changed
   meanwhile by someone else is never overwritten.

Every decision is appended to a JSON-lines log (promotions, rejections and skipped cycles, with all figures),
and a registered version carries its decision in its manifest's ``metrics`` and ``provenance`` (visible with
``ExplainModel``). Rejected challengers are registered too, without moving any alias, with "REJECTED" in
their description: anyone can list, explain and export them (e.g. to see what a poisoned re-fit learnt), and
clients that follow the alias never see them. ``register_rejected=False`` keeps them in the log only (the
registry has no delete, so a long-running worker adds one version per cycle).

The worker survives the twin restarting: calls that fail with UNAVAILABLE (or a deadline) are retried with
exponential backoff, and a registration is made idempotent by a unique id in the version's description (a
retry first looks whether the lost attempt got through). Its own state (counters, latched faults) is kept in
a JSON file, so the worker can restart too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
import numpy as np
from tqdm.auto import tqdm

from alutwin.cli import CliError, show_progress
from alutwin.fileio import utc_now
from identification.modelfile import LoadedModel
from identification.online import (
    Gate,
    RefitConfig,
    RefitError,
    ScreenConfig,
    Segment,
    count_windows,
    evaluate,
    refit,
    screen,
    segments_from_window,
    split_holdout,
)
from plant.simulator import DT
from twin.client import TwinClient
from twin.historian import Historian, is_postgres_url, open_historian
from twin.online.config import WorkerConfig
from twin.online.publish import Challenger, challenger_description, challenger_files
from twin.online.records import CycleRecord, append_record, load_state, save_state, summary_line

__all__ = ["OnlineWorker", "WorkerStopped"]

T = TypeVar("T")
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class WorkerStopped(Exception):
    """The worker was asked to stop while it waited for the twin."""


class OnlineWorker:
    """The online re-fit loop of one model (see the module docstring).

    Parameters
    ----------
    config : WorkerConfig
    client : TwinClient, optional
        A client to use (default: one to ``config.twin`` with the token, closed by :meth:`close`).
    historian : Historian, optional
        A historian to read (default: ``open_historian(config.historian)``, closed by :meth:`close`).
    progress : bool
        Progress bars and a line per decision on ``out``.
    out : TextIO, optional
        Where the lines go (default stderr).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        client: TwinClient | None = None,
        historian: Historian | None = None,
        progress: bool = False,
        out: TextIO | None = None,
    ) -> None:
        if not isinstance(config, WorkerConfig):
            raise ValueError(f"config must be a WorkerConfig, got {type(config).__name__}")
        self.config = config
        self._own_client = client is None
        self.client = client or TwinClient(
            config.twin,
            token=config.token,
            timeout=config.call_timeout_s,
            root_certificates=config.root_certificates,
            options=(("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)),
        )
        self._own_historian = historian is None
        self.historian = historian or open_historian(config.historian)
        self.progress = progress
        self.out = out
        self._stop = threading.Event()
        self._champions: dict[int, LoadedModel] = {}
        self.state = load_state(config.state)
        self.records: list[CycleRecord] = []

    # -- state ------------------------------------------------------------------------------------------------

    def reset_faults(self) -> None:
        """Forget every latched sensor fault (after the sensors were repaired)."""
        self.state["latched"] = {}
        save_state(self.config.state, self.state)

    # -- talking to the twin ----------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.progress or self.out is not None:
            tqdm.write(text, file=self.out or sys.stderr)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried with exponential backoff while the twin is unavailable."""
        delay = self.config.retry_initial_s
        warned = False
        while True:
            try:
                result = fn(*args, **kwargs)
                if warned:
                    self._say(f"online: the twin is back ({what})")
                return result
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY_CODES:
                    raise
                if not warned:
                    self._say(f"online: the twin is unavailable ({what}: {exc.code().name}); retrying")
                    warned = True
            if self._stop.wait(delay):
                raise WorkerStopped(f"stopped while waiting for the twin ({what})")
            delay = min(delay * 2, self.config.retry_max_s)

    def champion(self) -> tuple[int, LoadedModel]:
        """The version the alias points at now, and its model (exported once per version)."""
        cfg = self.config
        info = self._call("GetModel", self.client.get_model, cfg.model, alias=cfg.alias)
        version = info.model.version
        if version not in self._champions:
            exported = self._call("ExportModel", self.client.export, cfg.model, version=version)
            self._champions = {version: exported.load()}  # keep only the present champion
        return version, self._champions[version]

    def _register(self, files: tuple[bytes, bytes], description: str, marker: str) -> int:
        """Register a version; a retry after a lost reply first looks for ``marker`` in the descriptions."""
        cfg = self.config
        delay = cfg.retry_initial_s
        while True:
            try:
                model, _ = self.client.register(cfg.model, files, description=description)
                return model.version
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY_CODES:
                    raise
                self._say(f"online: the twin is unavailable (RegisterModel: {exc.code().name}); retrying")
            if self._stop.wait(delay):
                raise WorkerStopped("stopped while waiting for the twin (RegisterModel)")
            delay = min(delay * 2, cfg.retry_max_s)
            try:
                models, _ = self.client.list_models()
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY_CODES:
                    raise
                continue
            for m in models:
                if m.name == cfg.model:
                    for version, (_, _, desc) in m.versions.items():
                        if marker in desc:
                            return version

    # -- one cycle --------------------------------------------------------------------------------------------

    def _cells(self) -> list[int]:
        return list(self.config.cells) if self.config.cells is not None else self.historian.cells()

    def _progress_point(self) -> tuple[int, int, float]:
        """Accepted samples of the worker's cells, the newest step and its plant time."""
        cells = self._cells()
        count = sum(self.historian.count(c) for c in cells)
        last = max((s for c in cells if (s := self.historian.last_step(c)) is not None), default=-1)
        dt = next(iter(self._champions.values())).surrogate.dt if self._champions else DT
        return count, last, last * dt

    def due(self) -> bool:
        """Whether enough new data arrived for the next cycle."""
        return self._due(self._progress_point())

    def _due(self, point: tuple[int, int, float]) -> bool:
        cfg = self.config
        count, last, t = point
        if last < 0:
            return False
        if cfg.every_samples is not None and count - self.state["count_at_last"] >= cfg.every_samples:
            return True
        t_last = self.state["time_at_last"]
        if cfg.every_plant_s is not None:
            # the first cycle waits until the window can hold a held-out hour and some training data
            start = t_last if t_last is not None else 0.0
            need = cfg.every_plant_s if t_last is not None else cfg.holdout_s + cfg.min_train_steps * 10.0
            return t - start >= need
        return False

    def _data(self, champion: LoadedModel) -> tuple[list[Segment], list[Segment], list[dict[str, Any]], int]:
        cfg = self.config
        dt = champion.surrogate.dt
        replay = round(cfg.replay_s / dt)
        hold = round(cfg.holdout_s / dt)
        segments: list[Segment] = []
        holdout_from: dict[int, int] = {}
        faults: list[dict[str, Any]] = []
        newest = -1
        latched: dict[str, Any] = self.state["latched"]
        for cell in self._cells():
            last = self.historian.last_step(cell)
            if last is None:
                continue
            newest = max(newest, last)
            window = self.historian.window(cell, max(0, last + 1 - replay - hold), last + 1)
            if len(window) < 2:
                continue
            exclude = np.zeros(len(window), dtype=bool)
            if cfg.screen is not None:
                report = screen(window, champion, cfg.screen)
                if report.faults and str(cell) not in latched:
                    first = report.faults[0]
                    latched[str(cell)] = first.as_dict()
                    for f in report.faults:
                        faults.append(f.as_dict())
                    self._say(
                        f"online: cell {cell}: suspected sensor fault, excluded from step {first.step} on: {first.detail}"
                    )
            if str(cell) in latched:
                exclude |= np.asarray(window.steps) >= int(latched[str(cell)]["step"])
            segments += segments_from_window(window, exclude=exclude)
            holdout_from[cell] = last + 1 - hold
        train, held = split_holdout(segments, holdout_from)
        return train, held, faults, newest

    def run_cycle(self) -> CycleRecord:
        """Fit, judge and (maybe) promote one challenger now; the record is logged and returned."""
        return self._run_cycle(self._progress_point()[0])

    def _run_cycle(self, count: int) -> CycleRecord:
        """:meth:`run_cycle`, with ``count`` accepted samples when the cycle started."""
        cfg = self.config
        t0 = time.perf_counter()
        cycle = int(self.state["cycles"]) + 1
        version, champion = self.champion()
        train, held, faults, newest = self._data(champion)
        dt = champion.surrogate.dt
        seconds = {"data": time.perf_counter() - t0}
        common: dict[str, Any] = {"cycle": cycle, "plant_step": int(newest), "plant_time_s": float(newest * dt),
                                  "champion_version": version, "faults": tuple(faults), "time_utc": utc_now()}  # fmt: skip
        n_train = sum(s.n_steps for s in train)
        n_roll = count_windows(held, cfg.horizon, cfg.stride)
        record: CycleRecord
        if n_train < cfg.min_train_steps or n_roll < cfg.gate.min_rollouts:
            why = (
                f"not enough clean data: {n_train} training transitions (need {cfg.min_train_steps}), "
                f"{n_roll} held-out rollouts of {cfg.horizon} steps (need {cfg.gate.min_rollouts})"
            )
            record = CycleRecord("skipped", why, challenger_version=None, decision=None, refit=None,
                                 seconds=seconds, **common)  # fmt: skip
            return self._finish(record, count, newest * dt)
        rcfg = dataclasses.replace(cfg.refit, seed=cfg.refit.seed + cycle)
        try:
            result = refit(champion, train, rcfg, progress=f"re-fit {cycle}" if self.progress else False)
        except RefitError as exc:
            seconds["refit"] = time.perf_counter() - t0 - seconds["data"]
            record = CycleRecord("failed", f"rejected: {exc}", challenger_version=None, decision=None, refit=None,
                                 seconds=seconds, **common)  # fmt: skip
            return self._finish(record, count, newest * dt)
        seconds["refit"] = result.seconds
        t1 = time.perf_counter()
        sigma = champion.surrogate.normalization.state_std
        ev0 = evaluate(champion, held, horizon=cfg.horizon, stride=cfg.stride, sigma=sigma, engine=cfg.engine)
        ev1 = evaluate(result.surrogate, held, horizon=cfg.horizon, stride=cfg.stride, sigma=sigma, engine=cfg.engine)
        decision = cfg.gate.decide(champion, result.surrogate, ev0, ev1)
        seconds["evaluate"] = time.perf_counter() - t1
        challenger_version = None
        event = "promoted" if decision.promote else "rejected"
        reason = decision.reason
        if decision.promote or cfg.register_rejected:
            t2 = time.perf_counter()
            challenger = Challenger(
                uuid.uuid4().hex[:16], cycle, newest, version, champion, result, decision, ev0, ev1, held, faults
            )
            challenger_version, event, reason = self._publish(challenger)
            seconds["publish"] = time.perf_counter() - t2
        record = CycleRecord(event, reason, challenger_version=challenger_version, decision=decision, refit=result,
                             seconds=seconds, **common)  # fmt: skip
        return self._finish(record, count, newest * dt)

    def _publish(self, challenger: Challenger) -> tuple[int | None, str, str]:
        """Register the challenger (and move the alias if it was promoted): ``(version, event, reason)``."""
        cfg = self.config
        decision, version = challenger.decision, challenger.version
        files = challenger_files(cfg, challenger)
        description = challenger_description(challenger)
        try:
            new_version = self._register(files, description, challenger.marker)
        except grpc.RpcError as exc:
            # the twin refused the upload (e.g. its smoke rollout did not stay finite): a rejection too
            return None, "rejected", f"rejected: the twin refused the challenger ({exc.code().name}: {exc.details()})"
        if not decision.promote:
            return new_version, "rejected", decision.reason
        try:
            self._call("SetAlias", self.client.set_alias, cfg.model, cfg.alias, new_version, expected_version=version)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ABORTED:
                now = self._call("GetModel", self.client.get_model, cfg.model, alias=cfg.alias).model.version
                if now == new_version:  # an earlier attempt went through and only its reply was lost
                    return new_version, "promoted", decision.reason
                return (
                    new_version,
                    "rejected",
                    (
                        f"not promoted: alias {cfg.alias!r} moved away from version {version} meanwhile ({exc.details()})"
                    ),
                )
            raise
        return new_version, "promoted", decision.reason

    def _finish(self, record: CycleRecord, count: int, plant_time: float) -> CycleRecord:
        self.state["cycles"] = record.cycle
        self.state["count_at_last"] = int(count)
        self.state["time_at_last"] = float(plant_time)
        save_state(self.config.state, self.state)
        append_record(self.config.decisions, record)
        self.records.append(record)
        self._say(summary_line(record))
        return record

    # -- the loop ---------------------------------------------------------------------------------------------

    def poll(self) -> CycleRecord | None:
        """One look: run a cycle if it is due, else nothing."""
        point = self._progress_point()
        if not self._due(point):
            return None
        return self._run_cycle(point[0])

    def run(self, *, max_cycles: int | None = None) -> None:
        """Poll every ``poll_s`` until :meth:`stop` (or ``max_cycles`` cycles ran)."""
        done = 0
        while not self._stop.is_set():
            try:
                if self.poll() is not None:
                    done += 1
                    if max_cycles is not None and done >= max_cycles:
                        return
            except WorkerStopped:
                return
            self._stop.wait(self.config.poll_s)

    def stop(self) -> None:
        """Ask :meth:`run` (and any wait for the twin) to end."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self._own_client:
            self.client.close()
        if self._own_historian:
            self.historian.close()

    def __enter__(self) -> OnlineWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Command line (the parser of `alutwin identify` is in twin.commands)


def _run(args: argparse.Namespace) -> int:
    if not args.online:
        raise CliError(
            "only online identification is implemented here (--online); the offline study is `alutwin study`"
        )
    token = os.environ.get(args.token_env) if args.token_env else None
    if not token:
        raise CliError(f"the management token is needed to register models: set ${args.token_env}")
    roots = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    historian: Path | str
    if is_postgres_url(args.historian):  # no file to put the log and the state beside
        if args.decisions is None or args.state is None:
            raise CliError("with a postgresql:// historian, give --decisions and --state")
        historian, decisions, state = args.historian, args.decisions, args.state
    else:
        historian = Path(args.historian)
        if not historian.is_file():
            raise CliError(f"no historian at {historian}")
        decisions = args.decisions or historian.with_name(f"{historian.stem}-{args.model}-decisions.jsonl")
        state = args.state or historian.with_name(f"{historian.stem}-{args.model}-worker.json")
    config = WorkerConfig(
        twin=args.twin,
        historian=historian,
        model=args.model,
        decisions=decisions,
        state=state,
        alias=args.alias,
        token=token,
        root_certificates=roots,
        every_samples=args.every_samples,
        every_plant_s=None if args.every_hours == 0 else args.every_hours * 3600.0,
        replay_s=args.replay_hours * 3600.0,
        holdout_s=args.holdout_hours * 3600.0,
        cells=tuple(args.cells) if args.cells else None,
        refit=RefitConfig(mode=args.mode, epochs=args.epochs, lr=args.lr, half_life_steps=540.0),
        gate=Gate(margin=args.margin, cell_tolerance=args.cell_tolerance),
        screen=None if args.no_screen else ScreenConfig(),
        register_rejected=not args.log_rejected_only,
        poll_s=args.poll_s,
    )
    with OnlineWorker(config, progress=show_progress(args), out=sys.stdout) as worker:
        if args.reset_faults:
            worker.reset_faults()
        print(
            f"alutwin identify --online: model {args.model!r} on {args.twin}, historian {historian}; "
            f"decisions -> {decisions}",
            flush=True,
        )
        if args.once:
            record = worker.run_cycle()
            return 0 if record.event != "failed" else 1
        try:
            worker.run()
        except KeyboardInterrupt:
            worker.stop()
    return 0
