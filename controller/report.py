"""Figures of merit of closed-loop runs, and the report: markdown tables, PNG plots, JSON.

Every figure is computed on the plant's *true* trajectory (the controllers saw the measurements), with the
input applied over each 10 s step: energy ``sum I U dt``, metal ``sum k6 I dt``, time inside each window,
largest and integrated violation, and the closed-loop cost (the MPC's stage cost of ``controller.problem``
integrated over the run, without the move penalties).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from controller.closed_loop import Trace
from controller.problem import WINDOWS, CostWeights, controlled, cost_rate, violation
from plant.params import DEFAULT_PARAMS
from plant.signals import U

__all__ = ["SETTLE_H", "headline", "metrics", "trajectory_figure", "write_report"]

SETTLE_H = 6.0
"""Hours after which the time inside the windows is counted a second time: the random initial state may start
far outside a window (AlF3 at 13 % takes days to dilute), so the whole-run figure mixes start-up and holding."""


def _q(a: Sequence[float], q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def metrics(trace: Trace, weights: CostWeights | None = None) -> dict[str, Any]:
    """The figures of one run (a JSON-ready dict)."""
    weights = weights or CostWeights()
    x, u, dt = trace.x, trace.u, trace.dt  # (T + 1, 8), (T, 5)
    t = len(u)
    hours = t * dt / 3600.0
    with np.errstate(all="ignore"):
        values, power = controlled(x[:-1], u)  # each (T,)
        after, _ = controlled(x[1:], u)  # the states each step reached
        rate = cost_rate(x[:-1], u, weights)  # (T,) per hour
    energy = float(np.sum(power) * dt / 3.6e6)
    metal = float(np.sum(DEFAULT_PARAMS.k6 * u[:, U.CURRENT]) * dt)
    windows: dict[str, dict[str, Any]] = {}
    target_cost = violation_cost = 0.0
    for i, (value, window, wt) in enumerate(zip(values, WINDOWS, weights.targets, strict=True)):
        v_scaled = violation(value, window)  # (T,) in window scale
        v = v_scaled * window.scale
        if window.target is not None:
            target_cost += float(np.sum(wt * (value - window.target) ** 2) * dt / 3600.0)
        violation_cost += float(
            np.sum(weights.violation_linear * v_scaled + weights.violation_quadratic * v_scaled**2) * dt / 3600.0
        )
        reached = after[i]
        inside = (reached >= window.low) & (reached <= window.high)
        late = inside[round(SETTLE_H * 3600.0 / dt) :]
        windows[window.name] = {
            "unit": window.unit,
            "low": window.low,
            "high": window.high,
            "pct_time_inside": float(100.0 * np.mean(inside)) if t else float("nan"),
            "pct_time_inside_after_settling": float(100.0 * np.mean(late)) if len(late) else float("nan"),
            "max_violation": float(np.max(v)) if t else 0.0,
            "integrated_violation": float(np.sum(v) * dt / 3600.0),  # unit * h
            "mean": float(np.mean(reached)) if t else float("nan"),
        }
    solves = [p for p in trace.plans if p.status != "injected failure"]
    capped_used = sum(1 for p in trace.plans if p.capped)
    times = [p.solve_s for p in solves]
    per_iter = [p.solve_s / p.iterations for p in solves if p.iterations > 0]
    iters = [p.iterations for p in solves]
    statuses: dict[str, int] = {}
    for p in trace.plans:
        statuses[p.status] = statuses.get(p.status, 0) + 1
    modes: dict[str, int] = {}
    for m in trace.modes:
        modes[m] = modes.get(m, 0) + 1
    out = {
        "controller": trace.controller,
        "seed": trace.scenario.seed,
        "hours": hours,
        "steps": t,
        "fault": trace.fault,
        "energy_kwh": energy,
        "metal_kg": metal,
        "kwh_per_kg": energy / metal if metal > 0 else float("nan"),
        "mean_acd_mm": float(np.mean(u[:, U.ACD]) * 1000.0) if t else float("nan"),
        "cost": float(np.sum(rate) * dt / 3600.0),
        "cost_parts": {"energy": energy * weights.energy, "targets": target_cost, "violations": violation_cost},
        "windows": windows,
        "all_windows_pct": float(min(w["pct_time_inside"] for w in windows.values())),
        "all_windows_pct_after_settling": float(min(w["pct_time_inside_after_settling"] for w in windows.values())),
        "solve_s": {"p50": _q(times, 50), "p95": _q(times, 95), "max": max(times) if times else float("nan")},
        "solve_s_per_iteration_p50": _q(per_iter, 50),
        "iterations": {"mean": float(np.mean(iters)) if iters else float("nan"), "max": max(iters, default=0)},
        "solves": len(trace.plans),
        "capped_solves_used": capped_used,  # stopped by the iteration/wall cap, feasible iterate applied
        "statuses": statuses,
        "modes": modes,
        "safety": trace.safety,
        "watchdog_expired": trace.watchdog_expired,
        "model": trace.model,
        "wall_s": trace.wall_s,
    }
    return out


def headline(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cost ratios surrogate-NMPC / oracle-NMPC and solve-time ratio dense / sparse, per seed and over all."""
    by: dict[tuple[str, int], dict[str, Any]] = {(r["controller"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    out: dict[str, Any] = {"per_seed": {}}
    for seed in seeds:
        row: dict[str, float] = {}
        oracle = by.get(("oracle", seed))
        for name in ("sparse", "dense", "baseline"):
            r = by.get((name, seed))
            if r is not None and oracle is not None:
                row[f"cost_ratio_{name}_oracle"] = r["cost"] / oracle["cost"]
        base = by.get(("baseline", seed))
        for name in ("oracle", "sparse", "dense"):
            r = by.get((name, seed))
            if r is not None and base is not None:
                row[f"kwh_per_kg_{name}_vs_baseline"] = r["kwh_per_kg"] / base["kwh_per_kg"]
        out["per_seed"][seed] = row
    for name in ("sparse", "dense", "baseline"):
        num = [by[(name, s)]["cost"] for s in seeds if (name, s) in by and ("oracle", s) in by]
        den = [by[("oracle", s)]["cost"] for s in seeds if (name, s) in by and ("oracle", s) in by]
        if num:
            out[f"cost_ratio_{name}_oracle"] = float(np.sum(num) / np.sum(den))
    times: dict[str, list[float]] = {}
    for r in results:
        if r["controller"] in ("sparse", "dense", "oracle"):
            times.setdefault(r["controller"], []).append(r["solve_s"]["p50"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    out["solve_p50_s"] = med
    per_iter: dict[str, list[float]] = {}
    for r in results:
        if r["controller"] in med:
            per_iter.setdefault(r["controller"], []).append(r["solve_s_per_iteration_p50"])
    out["solve_s_per_iteration_p50"] = {k: float(np.median(v)) for k, v in per_iter.items()}
    if "sparse" in med and "dense" in med and med["sparse"] > 0:
        out["solve_time_ratio_dense_sparse"] = med["dense"] / med["sparse"]
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _markdown(results: Sequence[dict[str, Any]], head: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["# Closed-loop control report", ""]
    lines += [f"Settings: `{json.dumps(settings, default=str)}`", ""]
    lines += ["## Headline", ""]
    for key in ("cost_ratio_sparse_oracle", "cost_ratio_dense_oracle", "cost_ratio_baseline_oracle"):
        if key in head:
            lines.append(f"- {key.replace('_', ' ')}: **{head[key]:.4f}**")
    if "solve_time_ratio_dense_sparse" in head:
        lines.append(f"- median solve time dense / sparse: **{head['solve_time_ratio_dense_sparse']:.2f}x**")
    lines.append(
        f"- median solve time per model (s): {json.dumps({k: round(v, 3) for k, v in head['solve_p50_s'].items()})}"
    )
    lines.append(
        "- median time per IPOPT iteration (s): "
        + json.dumps({k: round(v, 4) for k, v in head["solve_s_per_iteration_p50"].items()})
    )
    lines += ["", "## Energy and cost", ""]
    lines.append(
        "| seed | controller | energy kWh | kWh/kg | mean ACD mm | cost | energy part | target part | violation part | fault |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cp = r["cost_parts"]
        lines.append(
            f"| {r['seed']} | {r['controller']} | {r['energy_kwh']:.1f} | {r['kwh_per_kg']:.4f} | {r['mean_acd_mm']:.2f} "
            f"| {r['cost']:.1f} | {cp['energy']:.1f} | {cp['targets']:.1f} | {cp['violations']:.1f} | {r['fault'] or '–'} |"
        )
    lines += [
        "",
        "## Windows",
        "",
        f"Per window: time inside over the whole run (%), time inside after the first {SETTLE_H:g} h (%), largest "
        "violation, integrated violation (unit·h).",
        "",
    ]
    names = [w.name for w in WINDOWS]
    lines.append("| seed | controller | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for r in results:
        cells = []
        for n in names:
            w = r["windows"][n]
            cells.append(
                f"{w['pct_time_inside']:.1f} / {w['pct_time_inside_after_settling']:.1f} / "
                f"{_fmt(w['max_violation'])} / {_fmt(w['integrated_violation'])}"
            )
        lines.append(f"| {r['seed']} | {r['controller']} | " + " | ".join(cells) + " |")
    lines += ["", "## Solver", ""]
    lines.append(
        "| seed | controller | solves | p50 s | p95 s | max s | iter mean | iter max | failures | shifted | fallback | statuses |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["controller"] == "baseline":
            continue
        s, it, sf = r["solve_s"], r["iterations"], r["safety"] or {}
        lines.append(
            f"| {r['seed']} | {r['controller']} | {r['solves']} | {_fmt(s['p50'])} | {_fmt(s['p95'])} | {_fmt(s['max'])} "
            f"| {_fmt(it['mean'])} | {it['max']} | {sf.get('failures', 0)} | {sf.get('shifted_intervals', 0)} "
            f"| {sf.get('fallback_intervals', 0)} | {json.dumps(r['statuses'])} |"
        )
    lines += ["", "Models:", ""]
    seen = set()
    for r in results:
        if r["model"] and r["controller"] not in seen:
            seen.add(r["controller"])
            lines.append(f"- {r['controller']}: `{json.dumps(r['model'], default=str)}`")
    return "\n".join(lines) + "\n"


_PANELS = (
    ("alumina_pct", "alumina (wt %)", 0),
    ("alf3_pct", "AlF3 (wt %)", 1),
    ("superheat", "superheat (°C)", 2),
    ("ledge_mass", "ledge mass (kg)", 3),
)


def trajectory_figure(traces: Sequence[Trace]) -> Figure:
    """The trajectories of runs on one scenario: controlled values with their windows (left), inputs (right).

    Parameters
    ----------
    traces
        Runs of different controllers on the same scenario, in the order of the legend.

    Returns
    -------
    A matplotlib Figure (not attached to pyplot) with 4 x 2 panels and one legend for all of them.
    """
    fig = Figure(figsize=(13, 11), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no process-wide backend or figure registry
    axes = fig.subplots(4, 2, sharex=True)
    axes = axes.T.ravel()
    lines = []
    for n, trace in enumerate(traces):
        # earlier traces drawn wider, so a controller that follows another one exactly stays visible under it
        style: dict[str, Any] = {"lw": max(2.4 - 0.6 * n, 0.8), "color": f"C{n}", "zorder": 2 + n}
        t = np.arange(len(trace.u) + 1) * trace.dt / 3600.0
        with np.errstate(all="ignore"):
            u_ext = np.vstack([trace.u, trace.u[-1:]]) if len(trace.u) else np.zeros((1, 5))
            values, power = controlled(trace.x, u_ext)
        for ax, (_, label, i) in zip(axes[:4], _PANELS, strict=True):
            (line,) = ax.plot(t, values[i], label=trace.controller, **style)
            ax.set_ylabel(label)
        lines.append(line)
        th = t[:-1]
        axes[4].plot(th, trace.u[:, U.ACD] * 1000.0, **style)
        # feeds as 10-min means (the cell's own feeder doses in batches)
        k = 60
        m = len(trace.u) // k * k
        if m:
            tm = th[:m].reshape(-1, k).mean(axis=1)
            axes[5].plot(tm, trace.u[:m, U.FEED_AL2O3].reshape(-1, k).mean(axis=1) * 1000, **style)
            axes[6].plot(tm, trace.u[:m, U.FEED_ALF3].reshape(-1, k).mean(axis=1) * 1000, **style)
        axes[7].plot(th, power[:-1] / 1000.0, **(style | {"lw": style["lw"] * 0.7}))
    for ax, (name, _, _) in zip(axes[:4], _PANELS, strict=True):
        w = next(w for w in WINDOWS if w.name == name)
        ax.axhspan(w.low, w.high, color="tab:green", alpha=0.12, lw=0, label="window")
        if w.target is not None:
            ax.axhline(w.target, color="tab:green", lw=0.8, ls="--", label="target")
    axes[4].set_ylabel("anode-cathode distance (mm)")
    axes[5].set_ylabel("alumina feed (g/s, 10-min mean)")
    axes[6].set_ylabel("AlF3 feed (g/s, 10-min mean)")
    axes[7].set_ylabel("cell power (kW)")
    axes[3].set_xlabel("hours of plant time")
    axes[7].set_xlabel("hours of plant time")
    for ax in axes:
        ax.grid(alpha=0.3)
    marks = [h for h in axes[0].get_legend_handles_labels()[0] if h.get_label() in ("window", "target")]
    fig.legend(handles=[*lines, *marks], loc="outside lower center", ncol=len(lines) + len(marks), fontsize=10)
    seed = traces[0].scenario.seed if traces else 0
    fig.suptitle(f"Closed loop, scenario seed {seed}: controlled values (left) and inputs (right)")
    return fig


def write_report(
    traces: Sequence[Trace],
    out: str | Path,
    *,
    settings: dict[str, Any] | None = None,
    weights: CostWeights | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and one ``trajectories_seed<N>.png`` per scenario into ``out``.

    Returns
    -------
    dict with ``results`` (one :func:`metrics` per trace), ``headline`` and ``settings``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = [metrics(t, weights) for t in traces]
    head = headline(results)
    settings = settings or {}
    doc = {"settings": settings, "headline": head, "results": results}
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str, allow_nan=True) + "\n")
    (out / "report.md").write_text(_markdown(results, head, settings))
    for seed in sorted({t.scenario.seed for t in traces}):
        fig = trajectory_figure([t for t in traces if t.scenario.seed == seed])
        fig.savefig(out / f"trajectories_seed{seed}.png", dpi=90)
    return doc
