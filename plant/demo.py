"""``alutwin plant-demo``: one cell for a day under its own feed controllers, plotted and summarised.

The scenario of ``control.md`` with the baseline controller: a seeded random initial state, the line current
stepping at random (the levels and hold times of the "aprbs" excitation), ACD fixed at 0.05 m, and the cell's
own alumina, AlF3 and tapping controllers. Writes ``baseline.png`` (every state with its unit, the control
windows shaded, current, ACD, feeds, cell voltage) and ``summary.txt`` (energy, metal, kWh/kg, time inside
each window, ranges, faults). A later stage grows this into the closed-loop comparison of ``control.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alutwin.cli import command_output_dir
from alutwin.cli import main as cli_main
from plant.datasets import DEFAULT_ENGINE, require_engine
from plant.domain import Fault
from plant.excitation import Exogenous, aprbs, sample_initial_states
from plant.params import DEFAULT_PARAMS
from plant.physics import algebraic
from plant.signals import STATES, U, X
from plant.simulator import DT, Trajectories, simulate

__all__ = ["Window", "WINDOWS", "BASELINE_ACD", "Scenario", "run_scenario", "summarise", "plot", "main"]

BASELINE_ACD = 0.05  # m, the baseline controller of control.md holds the ACD here


@dataclass(frozen=True)
class Window:
    """An operating window of ``control.md``: ``low <= value <= high`` in ``unit``."""

    name: str
    unit: str
    low: float
    high: float


WINDOWS: dict[str, Window] = {
    "alumina": Window("alumina", "%", 2.0, 4.0),
    "alf3": Window("AlF3", "%", 10.0, 12.0),
    "superheat": Window("superheat", "degC", 5.0, 15.0),
    "ledge": Window("ledge", "kg", 2000.0, 4500.0),
}
"""The controlled quantities' windows of ``control.md``."""


@dataclass(frozen=True)
class Scenario:
    """A simulated day of one cell and the derived signals (all per step k = 0 .. T-1, at the step's start).

    Attributes
    ----------
    traj : the simulation (x (1, T+1, 8), u (1, T, 5)).
    seed : the seed it was drawn from.
    hours : the horizon in hours of plant time.
    t_h : (T,) time in hours.
    alumina_pct, alf3_pct, superheat, liquidus, cell_voltage, power : (T,) each, in %, %, degC, degC, V, W.
    """

    traj: Trajectories
    seed: int
    hours: float
    t_h: np.ndarray
    alumina_pct: np.ndarray
    alf3_pct: np.ndarray
    superheat: np.ndarray
    liquidus: np.ndarray
    cell_voltage: np.ndarray
    power: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return self.traj.x[0, :-1]  # (T, 8) state at the start of each step

    @property
    def u(self) -> np.ndarray:
        return self.traj.u[0]  # (T, 5)

    def window_signal(self, key: str) -> np.ndarray:
        """The (T,) signal that window ``key`` of :data:`WINDOWS` bounds."""
        return {
            "alumina": self.alumina_pct,
            "alf3": self.alf3_pct,
            "superheat": self.superheat,
            "ledge": self.x[:, X.M_LEDGE],
        }[key]


def run_scenario(seed: int, hours: float, engine: str = DEFAULT_ENGINE) -> Scenario:
    """Simulate one cell for ``hours`` from a random initial state with random steps of the line current.

    ``numpy.random.SeedSequence(seed)`` spawns two streams: the initial state and the current profile.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (np.isfinite(hours) and hours > 0):
        raise ValueError(f"hours must be a positive number, got {hours!r}")
    n_steps = max(1, round(hours * 3600.0 / DT))
    init_rng, current_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    x0 = sample_initial_states(init_rng, 1)  # (1, 8)
    current = aprbs(current_rng, 1, n_steps).current  # (1, T) A, the "aprbs" levels and hold times
    zero = np.zeros_like(current)
    exo = Exogenous(current, np.full_like(current, BASELINE_ACD), zero, zero)
    traj = simulate(x0, exo, engine=engine)
    alg = algebraic(traj.x[0, :-1], traj.u[0])  # each (T,)
    return Scenario(
        traj=traj,
        seed=int(seed),
        hours=n_steps * DT / 3600.0,
        t_h=np.arange(n_steps) * DT / 3600.0,
        alumina_pct=100.0 * alg.c_alumina,
        alf3_pct=100.0 * alg.c_alf3,
        superheat=alg.superheat,
        liquidus=alg.liquidus,
        cell_voltage=alg.cell_voltage,
        power=alg.power,
    )


def summarise(sc: Scenario) -> list[str]:
    """The summary as lines of text: energy, metal, kWh/kg, time inside each window, ranges, faults."""
    dt = sc.traj.dt
    energy_kwh = float(np.sum(sc.power) * dt / 3.6e6)
    metal_kg = float(np.sum(DEFAULT_PARAMS.k6 * sc.u[:, U.CURRENT]) * dt)
    tapped_kg = float(np.sum(sc.u[:, U.TAPPING]) * dt)
    lines = [
        f"alutwin plant-demo: one cell, {sc.hours:.1f} h ({sc.u.shape[0]} steps of {dt:g} s), seed {sc.seed}; "
        f"baseline: the cell's feed controllers, ACD {BASELINE_ACD:.3f} m, line current in random steps",
        f"energy: {energy_kwh:.1f} kWh",
        f"metal produced: {metal_kg:.1f} kg (tapped {tapped_kg:.1f} kg)",
        f"specific energy: {energy_kwh / metal_kg:.2f} kWh/kg",
    ]
    for key, w in WINDOWS.items():
        v = sc.window_signal(key)
        inside = 100.0 * float(np.mean((v >= w.low) & (v <= w.high)))
        lines.append(f"inside {w.name} window {w.low:g}-{w.high:g} {w.unit}: {inside:.1f} % of the time")
    ranges = [
        ("alumina", sc.alumina_pct, "%", 2),
        ("AlF3", sc.alf3_pct, "%", 2),
        ("superheat", sc.superheat, "degC", 1),
        ("ledge", sc.x[:, X.M_LEDGE], "kg", 0),
        ("bath temperature", sc.x[:, X.T_BATH], "degC", 1),
        ("cell voltage", sc.cell_voltage, "V", 3),
        ("line current", sc.u[:, U.CURRENT] / 1000.0, "kA", 1),
    ]
    for name, v, unit, nd in ranges:
        lines.append(f"range of {name}: {np.min(v):.{nd}f} .. {np.max(v):.{nd}f} {unit}")
    k = int(sc.traj.fault_step[0])
    if k < 0:
        lines.append("faults: none")
    else:
        why = Fault(int(sc.traj.fault_code[0])).describe()
        lines.append(f"faults: at step {k} ({k * dt / 3600:.2f} h): {why}; the state is held from there on")
    return lines


def plot(sc: Scenario, path: Path) -> Path:
    """A multi-panel PNG of the states, the windowed quantities and the inputs (Agg canvas, no pyplot)."""
    fig = Figure(figsize=(15, 15))
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine would double the drawing time
    axes = fig.subplots(
        5,
        3,
        sharex=True,
        gridspec_kw={"left": 0.06, "right": 0.99, "bottom": 0.04, "top": 0.95, "hspace": 0.25, "wspace": 0.22},
    ).ravel()
    t = sc.t_h
    x, u = sc.x, sc.u

    def panel(ax, y, title: str, unit: str, window: str | None = None, **kw) -> None:
        ax.plot(t, y, lw=1.0, **kw)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if window is not None:
            w = WINDOWS[window]
            ax.axhspan(w.low, w.high, color="tab:green", alpha=0.15, label=f"window {w.low:g}-{w.high:g}")
            ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)

    s = STATES
    panel(axes[0], x[:, X.M_LEDGE], "side-ledge mass", s[X.M_LEDGE].unit, "ledge")
    panel(axes[1], sc.alumina_pct, "alumina concentration", "%", "alumina")
    panel(axes[2], sc.alf3_pct, "AlF3 concentration", "%", "alf3")
    panel(axes[3], sc.superheat, "superheat T_bath - T_liq", "degC", "superheat")
    panel(axes[4], x[:, X.T_BATH], "bath temperature", s[X.T_BATH].unit, label="T_bath")
    axes[4].plot(t, sc.liquidus, lw=1.0, ls="--", label="T_liq")
    axes[4].legend(loc="best", fontsize=8)
    panel(axes[5], x[:, X.T_LEDGE], "side-ledge temperature", s[X.T_LEDGE].unit)
    panel(axes[6], x[:, X.T_WALL], "side-wall temperature", s[X.T_WALL].unit)
    panel(axes[7], x[:, X.M_CRYOLITE], "molten cryolite mass", s[X.M_CRYOLITE].unit)
    panel(axes[8], x[:, X.M_METAL], "metal pad mass", s[X.M_METAL].unit)
    panel(axes[9], x[:, X.M_AL2O3], "dissolved alumina mass", s[X.M_AL2O3].unit)
    panel(axes[10], x[:, X.M_ALF3], "AlF3 mass", s[X.M_ALF3].unit)
    panel(axes[11], u[:, U.CURRENT] / 1000.0, "line current", "kA")
    panel(axes[12], 1000.0 * u[:, U.ACD], "anode-cathode distance", "mm")
    ax = axes[13]
    for i, name in ((U.FEED_AL2O3, "alumina"), (U.FEED_ALF3, "AlF3"), (U.TAPPING, "tapping")):
        ax.plot(t, u[:, i], lw=0.8, drawstyle="steps-post", label=name)
    ax.set_title("feeds and tapping (batch dumps)", fontsize=10)
    ax.set_ylabel("kg/s")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    panel(axes[14], sc.cell_voltage, "cell voltage", "V")
    for ax in axes[-3:]:
        ax.set_xlabel("time (h)")
    k = int(sc.traj.fault_step[0])
    if k >= 0:
        for ax in axes:
            ax.axvline(k * sc.traj.dt / 3600.0, color="tab:red", lw=1.0, ls=":")
    fig.suptitle(
        f"One cell, {sc.hours:.1f} h, seed {sc.seed}: own feed controllers, ACD {1000 * BASELINE_ACD:.0f} mm, "
        "random steps of the line current"
    )
    fig.savefig(path, dpi=80)
    return path


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    require_engine(args.engine)
    out: Path = command_output_dir(args.out, "plant-demo-output")
    sc = run_scenario(args.seed, args.hours, args.engine)
    png = plot(sc, out / "baseline.png")
    lines = summarise(sc)
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {png} and {summary} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``alutwin plant-demo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return cli_main(["plant-demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
