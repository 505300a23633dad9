"""``alutwin online-demo``: the twin follows a drifting plant, and refuses to learn from a broken sensor.

Everything runs in this process on loopback: the plant service (stepped, "aprbs" line current, with the
scenario's drift or sensor fault), the twin (seeded with a model that ships with alutwin,
:mod:`identification.pretrained`), the bridge that streams the plant's measurements into the twin's historian,
and the online re-fit worker (:mod:`twin.online.worker`). Plant time is accelerated: the demo steps the plant
an hour at a time, waits until the historian holds every sample, and lets the worker look.

Afterwards it replays the record: every ``curve_every_s`` of plant time it asks the twin (Predict, by version)
for a 1-hour-ahead prediction of every cell from the measured state under the inputs that were applied, once
with the version that was serving the alias then and once with the seed version (the "no re-fit" twin), and
scores both against what the plant did (AN-RFMSE averaged over the hour, in the seed model's training stds).
The measured states are the truth here: the demo's plant has no measurement noise, and cells with a sensor
fault are left out of the curve. It writes ``online_demo.png`` (both curves, the drift, every promotion and
rejection), ``summary.json`` and ``README.md`` to ``--out`` (default: a new folder in the working directory;
the command's parser is in :mod:`apps.commands`).

:func:`run_scenario` is also what ``bench/online_drift.py`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from alutwin.cli import command_output_dir
from alutwin.cli import main as cli_main
from identification.metrics import DIVERGENCE_LIMIT, an_rfmse_curve
from identification.modelfile import load_model
from identification.online import Gate, RefitConfig, ScreenConfig
from identification.pretrained import default_models_dir
from plant.client import PlantClient
from plant.config import PlantConfig
from plant.scenarios import ScenarioEvent
from plant.service import create_server as create_plant_server
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.historian import BridgeConfig, run_bridge
from twin.online import CycleRecord, OnlineWorker, WorkerConfig
from twin.serving import create_server as create_twin_server

__all__ = [
    "DEFAULT_SEED_MODEL",
    "ScenarioConfig",
    "ScenarioResult",
    "main",
    "run_scenario",
    "write_report",
]

DEFAULT_SEED_MODEL = default_models_dir() / "sparse-inputskip"
"""The model the demo's twin starts from: the packaged sparse surrogate (or ``$ALUTWIN_MODELS``'s)."""

_MODEL = "cell"
_HOUR = 3600.0


@dataclass(frozen=True)
class ScenarioConfig:
    """One run of plant + twin + bridge + worker.

    Parameters
    ----------
    hours : plant time to run, h.
    events : the plant's scenario (:class:`plant.scenarios.ScenarioEvent`: drifts, sensor faults).
    n_cells, seed : the potline.
    seed_model : the model directory the twin starts from.
    every_h, replay_h, holdout_h : the worker's cadence and windows, h of plant time.
    horizon : steps of the prediction scored (360 = 1 h), both by the worker's gate and in the curve.
    stride : steps between the gate's held-out rollouts.
    epochs : epochs of a warm re-fit.
    screen : screen the data for sensor faults (False: the gate is the only guard).
    gate : the worker's gate.
    curve_every_s : plant seconds between points of the error curve.
    chunk : plant steps per Step call (the bridge forwards them before the next).
    """

    hours: float
    events: tuple[ScenarioEvent, ...] = ()
    n_cells: int = 4
    seed: int = 1
    seed_model: Path = DEFAULT_SEED_MODEL
    every_h: float = 1.0
    replay_h: float = 4.0
    holdout_h: float = 1.5
    horizon: int = 360
    stride: int = 30
    epochs: int = 20
    screen: bool = True
    gate: Gate = field(default_factory=Gate)
    curve_every_s: float = 600.0
    chunk: int = 120

    def __post_init__(self) -> None:
        for name in ("hours", "every_h", "replay_h", "holdout_h", "curve_every_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ScenarioConfig.{name} must be a positive number, got {v!r}")
        for name in ("n_cells", "horizon", "stride", "epochs", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ScenarioConfig.{name} must be a positive integer, got {v!r}")
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "seed_model", Path(self.seed_model))


@dataclass(frozen=True)
class ScenarioResult:
    """What a run produced: the worker's records and the two error curves."""

    config: ScenarioConfig
    records: tuple[CycleRecord, ...]
    curve_t_h: np.ndarray  # (P,) plant time of each prediction start, h
    twin_error: np.ndarray  # (P,) served champion, mean over the healthy cells (NaN where all diverged)
    baseline_error: np.ndarray  # (P,) the seed version, never re-fitted
    twin_diverged: int
    baseline_diverged: int
    healthy_cells: tuple[int, ...]
    wall_s: float
    seed_kind: str

    def summary(self) -> dict[str, Any]:
        """JSON data: decisions, timings and the curves."""
        refits = [r.refit.seconds for r in self.records if r.refit is not None]
        cycles = [sum(r.seconds.values()) for r in self.records]
        return {
            "hours": self.config.hours,
            "n_cells": self.config.n_cells,
            "seed_model": self.seed_kind,
            "events": [dataclasses.asdict(e) for e in self.config.events],
            "screen": self.config.screen,
            "cycles": len(self.records),
            "promotions": sum(r.event == "promoted" for r in self.records),
            "rejections": sum(r.event == "rejected" for r in self.records),
            "skipped": sum(r.event == "skipped" for r in self.records),
            "failed": sum(r.event == "failed" for r in self.records),
            "refit_s_max": max(refits, default=None),
            "refit_s_median": float(np.median(refits)) if refits else None,
            "cycle_s_max": max(cycles, default=None),
            "decisions": [
                {
                    "plant_h": r.plant_time_s / _HOUR,
                    "event": r.event,
                    "version": r.challenger_version,
                    "reason": r.reason,
                    "refit_s": None if r.refit is None else r.refit.seconds,
                    "trained_until_h": None
                    if r.refit is None
                    else max(v[1] for v in r.refit.data["steps"].values()) * 10.0 / _HOUR,
                    "faults": list(r.faults),
                }
                for r in self.records
            ],
            "healthy_cells": list(self.healthy_cells),
            "twin_diverged": self.twin_diverged,
            "baseline_diverged": self.baseline_diverged,
            "curve": {
                "t_h": self.curve_t_h.tolist(),
                "twin": [None if not math.isfinite(v) else float(v) for v in self.twin_error],
                "no_refit": [None if not math.isfinite(v) else float(v) for v in self.baseline_error],
            },
            "wall_s": self.wall_s,
        }


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def _score(
    client: TwinClient, version: int, x0: np.ndarray, u: np.ndarray, x_true: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Per rollout AN-RFMSE over steps 1..H of ``version``'s prediction (inf where it diverged), ``(B,)``."""
    out = np.empty(x0.shape[0])
    for s in range(0, x0.shape[0], 256):
        pred = client.predict(_MODEL, x0[s : s + 256], u[s : s + 256], version=version)
        if pred.model.version != version:
            raise RuntimeError(f"asked for version {version}, the twin answered with {pred.model.version}")
        e = an_rfmse_curve(pred.require_mean(), x_true[s : s + 256], sigma)[:, 1:]  # (b, H)
        bad = ~np.all(np.isfinite(e), axis=1) | (e.max(axis=1) > DIVERGENCE_LIMIT)
        with np.errstate(all="ignore"):
            out[s : s + 256] = np.where(bad, np.inf, e.mean(axis=1))
    return out


def run_scenario(config: ScenarioConfig, workdir: Path, *, progress: bool = True) -> ScenarioResult:
    """Run plant, twin, bridge and worker through ``config.hours`` of plant time; then score the twin.

    ``workdir`` receives the twin's store (and historian) and the worker's decisions log.
    """
    t_wall = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    seed = load_model(config.seed_model)
    dt = seed.surrogate.dt
    n_steps = round(config.hours * _HOUR / dt)
    twin_cfg = TwinConfig(store=workdir / "store", port=0, token=token)
    twin, twin_port = create_twin_server(twin_cfg)
    twin.start()
    twin_addr = f"127.0.0.1:{twin_port}"
    plant_cfg = PlantConfig(
        n_cells=config.n_cells, seed=config.seed, port=0, current_profile="aprbs",
        stream_queue_size=max(100_000, 4 * config.chunk * config.n_cells), scenario=config.events,
    )  # fmt: skip
    plant, plant_port = create_plant_server(plant_cfg)
    plant.start()
    plant_addr = f"127.0.0.1:{plant_port}"
    stop = threading.Event()
    bridge_error: list[BaseException] = []

    def bridge() -> None:
        try:
            run_bridge(BridgeConfig(plant=plant_addr, twin=twin_addr, flush_s=0.05), token=token, stop=stop)
        except BaseException as exc:  # reported by the main thread
            bridge_error.append(exc)

    thread = threading.Thread(target=bridge, name="online-demo-bridge", daemon=True)
    client = TwinClient(twin_addr, token=token)
    worker = None
    try:
        client.register(_MODEL, config.seed_model, set_alias="champion", description=f"seed: {seed.kind}")
        thread.start()
        historian_path = twin_cfg.store / "historian.sqlite"
        _wait_for(historian_path.exists, 30.0, "the twin's historian")
        wcfg = WorkerConfig(
            twin=twin_addr, historian=historian_path, model=_MODEL, decisions=workdir / "decisions.jsonl",
            state=workdir / "worker.json", token=token, every_plant_s=config.every_h * _HOUR,
            replay_s=config.replay_h * _HOUR, holdout_s=config.holdout_h * _HOUR, horizon=config.horizon,
            stride=config.stride, min_train_steps=min(360, config.horizon),
            refit=RefitConfig(lr=1e-3, epochs=config.epochs, half_life_steps=540.0),
            gate=config.gate, screen=ScreenConfig() if config.screen else None,
        )  # fmt: skip
        worker = OnlineWorker(wcfg, progress=False, out=sys.stderr if progress else None)
        # the bridge must be subscribed (the plant's first measurements stored) before the plant moves on
        _wait_for(lambda: bridge_error or worker.historian.count() >= config.n_cells, 60.0, "the bridge to start")
        plant_client = PlantClient(plant_addr)
        bar = tqdm(total=n_steps, desc="plant time", unit="step", disable=not progress or None, leave=False)
        done = 0
        while done < n_steps:
            n = min(config.chunk, n_steps - done)
            plant_client.step(n)
            done += n
            target = config.n_cells * (done + 1)  # step 0 included
            _wait_for(lambda t=target: bridge_error or worker.historian.count() >= t, 120.0, "the bridge to catch up")
            if bridge_error:
                raise RuntimeError(f"the bridge failed: {bridge_error[0]}")
            bar.update(n)
            worker.poll()
        bar.close()
        plant_client.close()
        stop.set()

        # --- replay: 1-hour-ahead predictions of the served champion and of the seed version
        timeline = [(0, 1)] + [
            (r.plant_step, v)
            for r in worker.records
            if r.event == "promoted" and (v := r.challenger_version) is not None  # promoted: registered
        ]
        faulty = {c for e in config.events if e.kind != "drift" for c in (e.cells or range(config.n_cells))}
        healthy = tuple(c for c in range(config.n_cells) if c not in faulty)
        sigma = seed.surrogate.normalization.state_std
        h = config.horizon
        every = max(1, round(config.curve_every_s / dt))
        starts = np.arange(0, n_steps - h + 1, every)
        windows = [worker.historian.window(c) for c in healthy]
        for w in windows:
            if not np.array_equal(w.steps, np.arange(n_steps + 1)):
                raise RuntimeError(f"the historian misses samples of cell {w.cell}")
        x0 = np.concatenate([np.stack([w.x[s] for s in starts]) for w in windows])  # (C*P, 8)
        u = np.concatenate([np.stack([w.u[s + 1 : s + h + 1] for s in starts]) for w in windows])  # (C*P, H, 5)
        xt = np.concatenate([np.stack([w.x[s : s + h + 1] for s in starts]) for w in windows])  # (C*P, H+1, 8)
        start_all = np.tile(starts, len(windows))
        served = np.array([max(v for k, v in timeline if k <= s) for s in start_all])
        twin_scores = np.empty(start_all.size)
        for v in np.unique(served):
            sel = served == v
            twin_scores[sel] = _score(client, int(v), x0[sel], u[sel], xt[sel], sigma)
        base_scores = _score(client, 1, x0, u, xt, sigma)

        def per_start(scores: np.ndarray) -> np.ndarray:
            s = scores.reshape(len(windows), starts.size)  # (C, P)
            with np.errstate(all="ignore"):
                finite = np.where(np.isfinite(s), s, np.nan)
                out = np.nanmean(finite, axis=0) if np.isfinite(finite).any() else np.full(starts.size, np.nan)
            return np.where(np.isfinite(finite).any(axis=0), out, np.nan)

        return ScenarioResult(
            config=config,
            records=tuple(worker.records),
            curve_t_h=starts * dt / _HOUR,
            twin_error=per_start(twin_scores),
            baseline_error=per_start(base_scores),
            twin_diverged=int(np.sum(~np.isfinite(twin_scores))),
            baseline_diverged=int(np.sum(~np.isfinite(base_scores))),
            healthy_cells=healthy,
            wall_s=time.perf_counter() - t_wall,
            seed_kind=seed.kind,
        )
    finally:
        stop.set()
        if worker is not None:
            worker.close()
        client.close()
        thread.join(timeout=10.0)
        plant.stop(0)
        twin.stop(0)


def recovery(result: ScenarioResult, drift_h: float, factor: float = 1.2) -> dict[str, Any]:
    """The acceptance figures of a drift run.

    ``pre`` is the twin's mean error over predictions started in the hour before the last pre-drift hour
    (``[drift - 2 h, drift - 1 h)``: windows that end before the drift); ``hourly`` the mean over each hour of
    starts after the drift; ``recovered_h`` the first hour from which every later hourly mean is within
    ``factor`` x ``pre`` (None if never). The "no re-fit" twin is summarised the same way.
    """
    t = result.curve_t_h

    def mean(y: np.ndarray, a: float, b: float) -> float:
        sel = (t >= a - 1e-9) & (t < b - 1e-9) & np.isfinite(y)
        return float(y[sel].mean()) if sel.any() else float("nan")

    pre = mean(result.twin_error, drift_h - 2, drift_h - 1)
    pre_base = mean(result.baseline_error, drift_h - 2, drift_h - 1)
    hours = math.floor(t.max() - drift_h) + 1 if t.size else 0
    twin_h = [mean(result.twin_error, drift_h + k, drift_h + k + 1) for k in range(hours)]
    base_h = [mean(result.baseline_error, drift_h + k, drift_h + k + 1) for k in range(hours)]
    ok = [math.isfinite(v) and v <= factor * pre for v in twin_h]
    recovered = next((k for k in range(hours) if all(ok[k:])), None)
    late = [v for k, v in enumerate(base_h) if k >= 6 and math.isfinite(v)]
    return {
        "pre_level": pre,
        "pre_level_no_refit": pre_base,
        "factor": factor,
        "hourly_after_drift": twin_h,
        "hourly_after_drift_no_refit": base_h,
        "recovered_h": recovered,
        "recovered_within_6h": recovered is not None and recovered + 1 <= 6,
        "no_refit_stays_worse": bool(late) and min(late) > factor * pre,
    }


def write_report(result: ScenarioResult, out: Path, *, drift_h: float | None = None, title: str = "") -> dict[str, Any]:
    """``online_demo.png``, ``summary.json`` and ``README.md`` in ``out``; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if drift_h is not None:
        summary["acceptance"] = recovery(result, drift_h)
    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.semilogy(result.curve_t_h, result.baseline_error, color="0.55", lw=1.2, label="no re-fit (seed version)")
    ax.semilogy(result.curve_t_h, result.twin_error, color="C0", lw=1.8, label="twin (served champion)")
    if drift_h is not None:
        ax.axvline(drift_h, color="k", ls="--", lw=1, label="drift")
    first = {"promoted": True, "rejected": True}
    for r in result.records:
        if r.event not in first:
            continue
        color, marker = ("C2", "^") if r.event == "promoted" else ("C3", "x")
        ax.axvline(r.plant_time_s / _HOUR, color=color, lw=0.6, alpha=0.5)
        ax.plot([r.plant_time_s / _HOUR], [ax.get_ylim()[1] * 0.8], marker, color=color,
                label=r.event if first[r.event] else None)  # fmt: skip
        first[r.event] = False
    ax.set_xlabel("plant time of the prediction's start (h)")
    ax.set_ylabel(f"{result.config.horizon * 10 / 60:.0f}-min-ahead AN-RFMSE")
    ax.set_title(title or "online re-fit: prediction error of the twin over plant time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "online_demo.png", dpi=120)
    (out / "summary.json").write_text(
        json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    lines = [
        f"# {title or 'Online re-fit demo'}",
        "",
        f"Seed model `{result.seed_kind}`, {result.config.n_cells} cells, {result.config.hours:g} h of plant time, "
        f"scenario: {', '.join(_event_text(e) for e in result.config.events) or 'none'}; "
        f"screening {'on' if result.config.screen else 'off'}. Wall time {result.wall_s:.0f} s.",
        "",
        "![error over plant time](online_demo.png)",
        "",
        f"{summary['cycles']} re-fit cycles: {summary['promotions']} promoted, {summary['rejections']} rejected, "
        f"{summary['skipped']} skipped, {summary['failed']} failed; longest re-fit {summary['refit_s_max'] or 0:.1f} s.",
        "",
        "| plant h | decision | version | reason |",
        "|---|---|---|---|",
    ]
    for d in summary["decisions"]:
        lines.append(f"| {d['plant_h']:.2f} | {d['event']} | {d['version'] or ''} | {d['reason']} |")
    if "acceptance" in summary:
        a = summary["acceptance"]
        lines += [
            "",
            f"Pre-drift level {a['pre_level']:.4g}; hourly after the drift: "
            + ", ".join(f"{v:.3g}" for v in a["hourly_after_drift"])
            + f"; no re-fit: {', '.join(f'{v:.3g}' for v in a['hourly_after_drift_no_refit'])}.",
            f"Recovered to within {a['factor']}x after {a['recovered_h']} h "
            f"(within 6 h: {a['recovered_within_6h']}); no re-fit stays worse: {a['no_refit_stays_worse']}.",
        ]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _event_text(e: ScenarioEvent) -> str:
    cells = "all cells" if e.cells is None else f"cells {list(e.cells)}"
    if e.kind == "drift":
        return f"{e.parameter} x{e.factor:g} at {e.at_s / _HOUR:g} h ({cells})"
    what = f"offset {e.offset:+g}" if e.kind == "offset_sensor" else "stuck"
    return f"{e.state} sensor {what} at {e.at_s / _HOUR:g} h ({cells})"


def drift_config(hours: float = 18.0, drift_h: float = 8.0, **overrides: Any) -> ScenarioConfig:
    """The demo's drift: the bath-to-ledge heat-transfer coefficient of every cell rises by 20 %."""
    event = ScenarioEvent("drift", drift_h * _HOUR, parameter="h_bath_ledge", factor=1.2)
    return ScenarioConfig(hours=hours, events=(event,), **overrides)


def _run(args: argparse.Namespace) -> int:
    drift_h = args.drift_hours if args.drift_hours is not None else args.hours * 4 / 9
    horizon = round(args.horizon_min * 6)
    cfg = drift_config(
        args.hours, drift_h, seed=args.seed, n_cells=args.cells,
        seed_model=DEFAULT_SEED_MODEL if args.model is None else args.model,
        every_h=args.every_hours, replay_h=args.replay_hours, holdout_h=args.holdout_hours, horizon=horizon,
        stride=max(1, horizon // 12), epochs=args.epochs, curve_every_s=args.curve_every_min * 60.0,
    )  # fmt: skip
    out = command_output_dir(args.out, "online-demo-output")
    with tempfile.TemporaryDirectory(prefix="alutwin-online-demo-") as tmp:
        # not show_progress(args): the worker's messages go to a log too; the bar draws only on a terminal anyway
        result = run_scenario(cfg, Path(tmp), progress=not args.quiet)
        summary = write_report(result, out, drift_h=drift_h, title="Online re-fit through a drift")
        (out / "decisions.jsonl").write_bytes((Path(tmp) / "decisions.jsonl").read_bytes())
    a = summary["acceptance"]
    print(
        f"online-demo: {summary['promotions']} promotions, {summary['rejections']} rejections; pre-drift "
        f"{a['pre_level']:.4g}, recovered after {a['recovered_h']} h; report {out / 'README.md'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``alutwin online-demo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return cli_main(["online-demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
