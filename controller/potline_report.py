"""The report of a potline run (``alutwin control --ray``): per cell and for the line.

Per cell, the figures of :func:`controller.report.metrics` (energy per kg, time inside each window, solves, solve
times, safety-layer fallbacks). For the line: energy per kg of the whole line (total energy over total metal),
each window's time inside as the mean and the worst cell, the cells that held every window all the time, solves,
failures and fallbacks summed and counted by cell, solve times pooled over every cell, and the wall time of each
control interval: ``decide_s`` (every cell's NMPC, in parallel on the Ray actors) and ``advance_s`` (the plant's
steps and the measurements of every cell).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from controller.closed_loop import Trace
from controller.problem import WINDOWS, CostWeights
from controller.report import metrics

__all__ = ["line_summary", "potline_figure", "write_potline_report"]


def _q(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _cell_row(trace: Trace, m: dict[str, Any]) -> dict[str, Any]:
    safety = trace.safety or {}
    model = trace.model or {}
    return {
        "cell": trace.controller,
        "model_version": model.get("version"),
        "kwh_per_kg": m["kwh_per_kg"],
        "all_windows_pct": m["all_windows_pct"],
        "windows_pct": {name: w["pct_time_inside"] for name, w in m["windows"].items()},
        "solves": m["solves"],
        "failures": safety.get("failures", 0),
        "shifted_intervals": safety.get("shifted_intervals", 0),
        "fallback_intervals": safety.get("fallback_intervals", 0),
        "solve_s": m["solve_s"],
        "modes": m["modes"],
        "fault": trace.fault,
    }


def line_summary(
    traces: Sequence[Trace], timings: Sequence[Mapping[str, float]] = (), weights: CostWeights | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The line's figures and one row per cell (JSON-ready; no NaN: a figure that does not exist is None)."""
    per = [metrics(t, weights) for t in traces]
    rows = [_cell_row(t, m) for t, m in zip(traces, per, strict=True)]
    energy = float(sum(m["energy_kwh"] for m in per))
    metal = float(sum(m["metal_kg"] for m in per))
    solve_times = [p.solve_s for t in traces for p in t.plans if p.status != "injected failure"]
    windows = {}
    for w in WINDOWS:
        pct = [r["windows_pct"][w.name] for r in rows if math.isfinite(r["windows_pct"][w.name])]
        windows[w.name] = {"mean_pct": float(np.mean(pct)) if pct else None, "worst_cell_pct": min(pct, default=None)}
    decide = [float(t["decide_s"]) for t in timings]
    advance = [float(t["advance_s"]) for t in timings]
    line = {
        "cells": len(traces),
        "hours": per[0]["hours"] if per else 0.0,
        "energy_kwh": energy,
        "metal_kg": metal,
        "kwh_per_kg": energy / metal if metal > 0 else None,
        "kwh_per_kg_cells": {"min": min(r["kwh_per_kg"] for r in rows), "max": max(r["kwh_per_kg"] for r in rows)}
        if rows
        else None,
        "windows": windows,
        "cells_all_windows_100pct": sum(1 for r in rows if r["all_windows_pct"] >= 100.0),
        "solves": sum(r["solves"] for r in rows),
        "failures": sum(r["failures"] for r in rows),
        "fallback_intervals": sum(r["fallback_intervals"] for r in rows),
        "cells_with_fallback": sum(1 for r in rows if r["fallback_intervals"] > 0),
        "faulted_cells": [r["cell"] for r in rows if r["fault"]],
        "solve_s": {"p50": _q(solve_times, 50), "p95": _q(solve_times, 95), "max": max(solve_times, default=None)},
        "interval_decide_s": {"p50": _q(decide, 50), "max": max(decide, default=None), "each": decide},
        "interval_advance_s": {"p50": _q(advance, 50), "max": max(advance, default=None), "each": advance},
    }
    return _finite(line), _finite(rows)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def _markdown(line: dict[str, Any], rows: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> str:
    d, a = line["interval_decide_s"], line["interval_advance_s"]
    out = [
        f"# Potline run: {line['cells']} cells, {_fmt(line['hours'])} h, one NMPC per cell on Ray",
        "",
        "| Line | |",
        "|---|---|",
        f"| energy per kg of metal (whole line) | {_fmt(line['kwh_per_kg'], 5)} kWh/kg |",
        f"| cells holding every window all the time | {line['cells_all_windows_100pct']} of {line['cells']} |",
        f"| solves / failed / fallback intervals | {line['solves']} / {line['failures']} / "
        f"{line['fallback_intervals']} ({line['cells_with_fallback']} cells fell back) |",
        f"| solve time p50 / p95 / max | {_fmt(line['solve_s']['p50'])} / {_fmt(line['solve_s']['p95'])} / "
        f"{_fmt(line['solve_s']['max'])} s |",
        f"| interval wall time, all cells' NMPCs (p50 / max) | {_fmt(d['p50'])} / {_fmt(d['max'])} s |",
        f"| interval wall time, plant steps and measurements (p50 / max) | {_fmt(a['p50'])} / {_fmt(a['max'])} s |",
        f"| faulted cells | {', '.join(line['faulted_cells']) or 'none'} |",
        "",
        "| Window | mean time inside, % | worst cell, % |",
        "|---|---|---|",
    ]
    for name, w in line["windows"].items():
        out.append(f"| {name} | {_fmt(w['mean_pct'], 4)} | {_fmt(w['worst_cell_pct'], 4)} |")
    names = [w.name for w in WINDOWS]
    out += [
        "",
        "## Cells",
        "",
        "| cell | model version | kWh/kg | " + " | ".join(f"{n} %" for n in names) + " | solves | failed | "
        "shifted | fallback | solve p50 s | solve max s | fault |",
        "|" + "---|" * (10 + len(names)),
    ]
    for r in rows:
        s = r["solve_s"]
        out.append(
            f"| {r['cell']} | {_fmt(r['model_version'])} | {_fmt(r['kwh_per_kg'], 5)} | "
            + " | ".join(_fmt(r["windows_pct"][n], 4) for n in names)
            + f" | {r['solves']} | {r['failures']} | {r['shifted_intervals']} | {r['fallback_intervals']} | "
            f"{_fmt(s['p50'])} | {_fmt(s['max'])} | {r['fault'] or ''} |"
        )
    out += ["", "## Settings", "", "```json", json.dumps(settings, indent=1, default=str), "```", ""]
    return "\n".join(out)


def potline_figure(line: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-cell energy per kg and solve times (histograms), and each interval's wall time (bars)."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    ax = fig.subplots(1, 3)
    kwh = [r["kwh_per_kg"] for r in rows if r["kwh_per_kg"] is not None]
    ax[0].hist(kwh, bins=min(30, max(5, len(kwh) // 5)), color="tab:blue")
    ax[0].set(xlabel="kWh/kg", ylabel="cells", title="Energy per kg, per cell")
    times = [s for r in rows for s in (r["solve_s"]["p50"], r["solve_s"]["max"]) if s is not None]
    ax[1].hist(times, bins=30, color="tab:orange")
    ax[1].set(xlabel="s", ylabel="cells x (p50, max)", title="Solve time per cell: p50 and max")
    d, a = line["interval_decide_s"]["each"], line["interval_advance_s"]["each"]
    k = np.arange(len(d))
    ax[2].bar(k, d, label="NMPCs (Ray)", color="tab:green")
    ax[2].bar(k, a, bottom=d, label="plant steps", color="tab:gray")
    ax[2].set(xlabel="control interval", ylabel="wall time, s", title="Wall time per interval")
    ax[2].legend()
    return fig


def write_potline_report(
    traces: Sequence[Trace],
    out: str | Path,
    *,
    settings: Mapping[str, Any] | None = None,
    timings: Sequence[Mapping[str, float]] = (),
    weights: CostWeights | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``potline.png`` into ``out``.

    Returns
    -------
    dict with ``line`` (:func:`line_summary`), ``cells`` (one row per cell) and ``settings``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    line, rows = line_summary(traces, timings, weights)
    settings = dict(settings or {})
    doc = {"line": line, "cells": rows, "settings": settings}
    (out / "report.json").write_text(json.dumps(_finite(doc), indent=1, default=str, allow_nan=False) + "\n")
    (out / "report.md").write_text(_markdown(line, rows, settings))
    fig = potline_figure(line, rows)
    FigureCanvasAgg(fig)
    fig.savefig(out / "potline.png", dpi=90)
    return doc
