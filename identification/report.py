"""Markdown report and figures of the identification study (``results.json`` -> ``README.md`` + PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from identification.estimator import KINDS
from identification.metrics import TRUE_STRUCTURE, WINDOWS
from identification.pretrained import PACKAGED_KINDS
from plant.signals import INPUT_NAMES, STATE_NAMES
from plant.simulator import DT

__all__ = ["GOALS", "PUBLISHED", "figures", "write_figures", "write_report"]

PUBLISHED = {
    "dense": {"100dT_median": 2e-2, "5000dT_median": 3e-1, "diverged_by_2500dT": 120, "diverged_by_5000dT": 275},
    "l1": {"100dT_median": 1.5e-2, "5000dT_median": 2.5e-1, "diverged_by_2500dT": 11, "diverged_by_5000dT": 90},
    "hybrid": {"100dT_median": 5e-3, "5000dT_median": 6e-2, "diverged_by_2500dT": 0, "diverged_by_5000dT": 34},
}
"""The companion study's figures (40 training trajectories, 1000 rollouts), from spec/learning.md."""

GOALS = {"diverged_fraction": 0.01, "5000dT_median": 0.1, "nonzero": 300, "f1": 0.9, "jaccard": 0.9}


def _fmt(v: float | int | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _kinds(runs: dict) -> list[str]:
    """The kinds present in ``runs``, in the order of :data:`KINDS`."""
    present = {r["kind"] for r in runs.values()}
    order = list(KINDS)
    return sorted(present, key=lambda k: order.index(k) if k in order else len(order))


def _sizes(runs: dict) -> list[int]:
    return sorted({r["n_train"] for r in runs.values()})


def _plot_horizon(runs: dict, size: int) -> Figure:
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    for kind in _kinds(runs):
        r = runs.get(f"{kind}@{size}")
        if not r or not r["median_curve"]:
            continue
        k = np.arange(len(r["median_curve"])) * r["curve_stride"]
        ax.semilogy(k[1:], np.maximum(r["median_curve"][1:], 1e-6), lw=1.3, label=kind)
    for start, _ in WINDOWS.values():
        if start:
            ax.axvline(start, color="0.55", lw=0.8, ls=":")
            ax.text(start, 0.02, f" {start}ΔT", transform=ax.get_xaxis_transform(), fontsize=8, color="0.35")
    ax.set_xlabel("open-loop step k (ΔT = 10 s)")
    ax.set_ylabel("median AN-RFMSE e_k (log scale)")
    hours = ax.secondary_xaxis(
        "top", functions=(lambda k: np.asarray(k) * DT / 3600.0, lambda h: np.asarray(h) * 3600.0 / DT)
    )
    hours.set_xlabel("hours of plant time")
    ax.set_title(
        f"Open-loop error vs horizon, {size} training trajectories (median over rollouts that did not diverge)"
    )
    ax.legend(title="model", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    return fig


def _plot_divergence(runs: dict) -> Figure:
    kinds, sizes = _kinds(runs), _sizes(runs)
    fig = Figure(figsize=(9, 1.6 + 0.24 * len(kinds) * len(sizes)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(sizes)
    rows = np.arange(len(kinds))
    top = 100 * GOALS["diverged_fraction"]
    for j, n in enumerate(sizes):
        found = [runs.get(f"{k}@{n}") for k in kinds]
        pct = [100 * r["diverged_by_5000dT"] / r["rollouts"] if r else 0.0 for r in found]
        bars = ax.barh(rows - 0.4 + (j + 0.5) * height, pct, height, label=f"{n} training trajectories")
        texts = [f"{p:.1f} %" if r else "not run" for p, r in zip(pct, found, strict=True)]
        ax.bar_label(bars, texts, padding=3, fontsize=8, bbox={"fc": "white", "ec": "none", "pad": 0.3})
        top = max(top, *pct)
    ax.set_yticks(rows, kinds)
    ax.set_ylabel("model")
    ax.invert_yaxis()  # the first kind on top
    ax.set_xlim(0, 1.18 * top)  # room for the value labels
    ax.axvline(100 * GOALS["diverged_fraction"], color="k", ls="--", lw=0.9, label="goal: at most 1 %")
    ax.set_xlabel("rollouts diverged by 5000ΔT (% of each model's rollouts)")
    counts = sorted({r["rollouts"] for r in runs.values()})
    each = f"{counts[0]} rollouts per model" if len(counts) == 1 else "rollouts per model as in the table"
    ax.set_title(f"Open-loop rollouts that diverged within 5000 steps of 10 s ({each})")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    return fig


def _plot_structure(runs: dict, size: int) -> Figure:
    kinds = [k for k in _kinds(runs) if f"{k}@{size}" in runs]
    panels = [("true structure (plant.md)", TRUE_STRUCTURE.astype(float))] + [
        (
            f"{k}: structure F1 {runs[f'{k}@{size}']['structure_jacobian']['f1']:.2f}",
            np.asarray(runs[f"{k}@{size}"]["dependency_fraction"]),
        )
        for k in kinds
    ]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(4.7 * ncol + 1.4, 3.4 * nrow + 1.0), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    inputs = [*STATE_NAMES, *INPUT_NAMES]
    outputs = [f"d{n}/dt" for n in STATE_NAMES]
    rows, cols = np.nonzero(TRUE_STRUCTURE)
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        title, mat = panels[i]
        image = ax.imshow(mat, cmap="Greys", vmin=0, vmax=1)
        ax.scatter(cols, rows, s=14, c="tab:red", linewidths=0)
        ax.axvline(len(STATE_NAMES) - 0.5, color="tab:blue", lw=1.2)  # states | manipulated inputs
        ax.set_xticks(range(len(inputs)), inputs, rotation=90, fontsize=8)
        ax.set_yticks(range(len(outputs)), outputs, fontsize=8)
        ax.tick_params(labelleft=i % ncol == 0)
        ax.set_xticks(np.arange(len(inputs) + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(len(outputs) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="0.75", lw=0.4)
        ax.tick_params(which="minor", length=0)
        ax.set_title(title, fontsize=10)
    if image is not None:  # always: the true structure is the first panel
        fig.colorbar(image, ax=axes, shrink=0.5, label="share of ensemble members whose data Jacobian uses the input")
    fig.supxlabel("state or manipulated input the derivative depends on")
    fig.supylabel("derivative of the state")
    fig.suptitle(
        f"Dependency matrices, {size} training trajectories: which state or input (columns) each derivative (rows) "
        "depends on\nred dots: the true dependencies (plant.md); blue line: states | manipulated inputs"
    )
    return fig


def _from_zero(ax: Axes, values: list[float]) -> None:
    """The y axis from 0 to a tenth above the largest finite value (the autoscaled top where none is)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    top = 1.1 * max(finite) if finite and max(finite) > 0 else None
    ax.set_ylim(0, top)


def _plot_lambda(sweep: dict, members: int | None) -> Figure:
    items = sorted(sweep.values(), key=lambda r: r["lambda"])
    lam = [r["lambda"] for r in items]
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    left, right = "tab:blue", "tab:red"
    of = f"mean of {members} members" if members else "mean of the members"
    (nz,) = ax.semilogx(lam, [r["nonzero_1e-2"] for r in items], "o-", color=left, label="non-zero weights (left axis)")
    ax.set_xlabel("ℓ1 strength λ = λ_in (log scale)")
    ax.set_ylabel(f"non-zero weights, |w| > 1e-2 ({of})", color=left)
    ax.tick_params(axis="y", colors=left)
    _from_zero(ax, [r["nonzero_1e-2"] for r in items])
    ax2 = ax.twinx()
    (err,) = ax2.semilogx(
        lam, [r["5000dT_median"] for r in items], "s--", color=right, label="median AN-RFMSE at 5000ΔT (right axis)"
    )
    ax2.set_ylabel("median AN-RFMSE at 5000ΔT (window 2500–5000ΔT)", color=right)
    ax2.tick_params(axis="y", colors=right)
    _from_zero(ax2, [r["5000dT_median"] for r in items])
    ax2.spines["left"].set_color(left)
    ax2.spines["right"].set_color(right)
    ax.set_title(f"ℓ1 strength vs sparsity and accuracy ({items[0]['n_train']} training trajectories)")
    ax.grid(alpha=0.3)
    fig.legend(handles=[nz, err], loc="outside lower center", ncol=2, fontsize=9)
    return fig


def figures(results: dict) -> dict[str, Figure]:
    """The study's figures for ``results`` (the contents of ``results.json``), by file name.

    Parameters
    ----------
    results
        The study's results: ``runs`` (required, non-empty), and ``lambda_sweep`` and ``config`` if present.

    Returns
    -------
    ``error_vs_horizon.png``, ``divergence.png``, ``structure.png`` and, when the results hold a λ sweep,
    ``nonzeros_vs_lambda.png``, each a matplotlib Figure (not attached to pyplot).

    Raises
    ------
    ValueError
        If ``results`` holds no finished run.
    """
    runs = results.get("runs", {})
    if not runs:
        raise ValueError("the results hold no finished run to report on")
    big = _sizes(runs)[-1]
    out = {
        "error_vs_horizon.png": _plot_horizon(runs, big),
        "divergence.png": _plot_divergence(runs),
        "structure.png": _plot_structure(runs, big),
    }
    if results.get("lambda_sweep"):
        out["nonzeros_vs_lambda.png"] = _plot_lambda(
            results["lambda_sweep"], results.get("config", {}).get("sweep_members")
        )
    return out


def write_figures(results: dict, out: Path) -> list[Path]:
    """Render :func:`figures` of ``results`` as PNGs into the folder ``out``; returns their paths.

    This needs only ``results.json``: ``write_figures(json.loads(Path("results.json").read_text()), folder)``
    redraws a finished study's figures without re-running it.
    """
    out = Path(out)
    paths = []
    for name, fig in figures(results).items():
        _save(fig, out / name)
        paths.append(out / name)
    return paths


def write_report(results: dict, out: Path) -> Path:
    """Write figures and ``README.md`` for ``results`` into ``out``; returns the report's path."""
    out = Path(out)
    runs = results.get("runs", {})
    write_figures(results, out)
    sizes = _sizes(runs)
    big = sizes[-1]
    cfg = results.get("config", {})
    lines = [
        "# Identification study: sparse neural surrogates of the Hall–Héroult cell",
        "",
        "Generated by `alutwin study` from `results.json` in this folder. Protocol of `spec/learning.md`: "
        f"'aprbs' data, {cfg.get('n_steps')} steps of 10 s; ensembles of {cfg.get('n_members')} members; "
        f"{cfg.get('epochs')} epochs of Adam (lr 1e-3, batch 128); open-loop explicit-Euler rollouts over "
        f"{cfg.get('n_test')} test trajectories from other seeds, so {cfg.get('n_test', 0) * cfg.get('n_members', 0)} "
        "rollouts per model.",
        "",
        "Normalisation of every figure: AN-RFMSE divides each state's error by the training set's std of that "
        "state (σ_i) and averages over the 8 states; NRMSE is RMSE / σ_i per state; FIT% uses each state's "
        "own spread in the test data. Window means leave diverged rollouts out (max e_k > 3, or NaN).",
        "",
        "## Model kinds",
        "",
        *[f"- **{k}**: {KINDS[k].description}" for k in _kinds(runs)],
        "",
        "## Results",
        "",
        "| model | train traj. | median 100ΔT | median 2500ΔT | median 5000ΔT (q25–q75) | diverged by 2500ΔT | diverged by 5000ΔT "
        "| non-zero weights (exact / >1e-2) | structure F1 (Jacobian / paths) | Jaccard | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for k in _kinds(runs):
            r = runs.get(f"{k}@{n}")
            if r is None:
                continue
            lines.append(
                f"| {k} | {n} | {_fmt(r['100dT_median'])} | {_fmt(r['2500dT_median'])} | {_fmt(r['5000dT_median'])} "
                f"({_fmt(r['5000dT_q25'])}–{_fmt(r['5000dT_q75'])}) | {r['diverged_by_2500dT']} / {r['rollouts']} "
                f"| {r['diverged_by_5000dT']} / {r['rollouts']} | {_fmt(r['nonzero_exact'], 4)} / {_fmt(r['nonzero_1e-2'], 4)} "
                f"| {r['structure_jacobian']['f1']:.2f} / {r['structure_path']['f1']:.2f} | {r['jaccard_jacobian']:.2f} "
                f"| {r['train_seconds']:.0f} |"
            )
    lines += [
        "",
        "Published anchors (companion study, 40 trajectories, 1000 rollouts; read off its plots): "
        + "; ".join(
            f"{k}: 100ΔT ≈ {v['100dT_median']:g}, 5000ΔT ≈ {v['5000dT_median']:g}, diverged ≈ {v['diverged_by_2500dT']} / "
            f"{v['diverged_by_5000dT']} by 2500 / 5000ΔT"
            for k, v in PUBLISHED.items()
        )
        + ". Non-zero weights of the published sparse models (|w| > 1e-2): ≈ 1039 / 765 / 473 with 10 / 20 / 40 "
        "trajectories; dense ≈ 1550.",
        "",
        "![error vs horizon](error_vs_horizon.png)",
        "",
        "![divergence](divergence.png)",
        "",
        "![structure](structure.png)",
        "",
    ]
    if results.get("lambda_sweep"):
        lines += ["![non-zeros vs lambda](nonzeros_vs_lambda.png)", ""]
    lines += _claims(runs, sizes)
    lines += _beyond(runs, big)
    lines += _per_state(runs, big)
    if cfg.get("save_models", True):
        lines += _models_note(big)
    data = results.get("data", {})
    lines += [
        "## Data and run",
        "",
        f"- Training trajectories that faulted (used up to the fault): {data.get('train_faulted')}.",
        f"- Test trajectories drawn: {data.get('test_drawn')}; those that left the model's valid domain "
        f"({data.get('test_faulted_dropped')}) were dropped and the first {cfg.get('n_test')} complete ones kept.",
        f"- Total time: {results.get('seconds_total', 0):.0f} s on {results.get('machine', {}).get('machine')}.",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _models_note(size: int) -> list[str]:
    """Where the run's models are, and how they become alutwin's default models."""
    return [
        "## Models",
        "",
        f"`alutwin study` writes the ensembles trained on {size} trajectories as model directories into "
        "`models/<kind>/` of its output folder (`manifest.json` + `weights.safetensors`, with the training data's "
        "checksum and their scores). alutwin's default models are three such directories "
        f"({', '.join(f'`{k}`' for k in PACKAGED_KINDS)} in `identification/pretrained/`, from the published "
        "protocol). To use a run's models instead, set `ALUTWIN_MODELS` to its `models` folder; to make them the "
        "packaged defaults, copy those three directories over `identification/pretrained/` in a checkout and "
        "reinstall (`pip install .`; an editable install sees them at once).",
        "",
    ]


def _claims(runs: dict, sizes: list[int]) -> list[str]:
    lines = ["## Do the paper's claims hold on our plant?", ""]
    small = sizes[0]
    d, s = runs.get(f"dense@{small}"), runs.get(f"l1@{small}")
    if d and s:
        better_err = s["5000dT_median"] < d["5000dT_median"]
        fewer_div = s["diverged_by_5000dT"] < d["diverged_by_5000dT"]
        lines.append(
            f"- **Sparse vs dense with {small} trajectories**: median 5000ΔT {_fmt(s['5000dT_median'])} (ℓ1) vs "
            f"{_fmt(d['5000dT_median'])} (dense); diverged by 5000ΔT {s['diverged_by_5000dT']} vs "
            f"{d['diverged_by_5000dT']} of {d['rollouts']}. "
            + (
                "The claim holds: the sparse models are more accurate and more stable."
                if better_err and fewer_div
                else "The claim holds only in part: "
                + ("more accurate" if better_err else "not more accurate")
                + ", "
                + ("more stable." if fewer_div else "not more stable.")
            )
        )
    big = sizes[-1]
    cands = [r for k, r in runs.items() if k.endswith(f"@{big}")]
    if cands:
        best = min(cands, key=lambda r: (r["diverged_by_5000dT"], r["5000dT_median"]))
        frac = best["diverged_by_5000dT"] / best["rollouts"]
        f1 = best["structure_jacobian"]["f1"]
        checks = [
            (f"≤ 1 % diverged by 5000ΔT: {100 * frac:.1f} %", frac <= GOALS["diverged_fraction"]),
            (f"median 5000ΔT ≤ 0.1: {_fmt(best['5000dT_median'])}", best["5000dT_median"] <= GOALS["5000dT_median"]),
            (f"≤ 300 non-zero weights: {best['nonzero_exact']:.0f} exact", best["nonzero_exact"] <= GOALS["nonzero"]),
            (f"structure F1 ≥ 0.9: {f1:.2f}", f1 >= GOALS["f1"]),
            (f"ensemble Jaccard ≥ 0.9: {best['jaccard_jacobian']:.2f}", best["jaccard_jacobian"] >= GOALS["jaccard"]),
        ]
        lines.append(
            f"- **Best variant with {big} trajectories: {best['kind']}** (fewest divergences, then lowest error):"
        )
        lines += [f"  - {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    lines.append("")
    return lines


def _beyond(runs: dict, size: int) -> list[str]:
    """The table of the test sets beyond the training excitation (``identification.testsets``)."""
    names = sorted({t for k in _kinds(runs) for t in runs.get(f"{k}@{size}", {}).get("test_sets", {})})
    if not names:
        return []
    lines = [
        f"## Beyond the training excitation, {size} training trajectories",
        "",
        "The same models on test sets the training data never show (`identification/testsets.py`, seeded): "
        "`closed-loop` (inputs as the closed loop makes them: ACD moved as the NMPC may, continuous feeding), "
        "`outside-box` (initial states outside the training box), `current-ramps` (line-current ramps). "
        "Median 5000ΔT AN-RFMSE (ratio to the model's own aprbs figure) and rollouts diverged.",
        "",
        "| model | aprbs | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for k in _kinds(runs):
        r = runs.get(f"{k}@{size}")
        if r is None or "test_sets" not in r:
            continue
        base = r["5000dT_median"]
        cells = [f"{_fmt(base)}, {r['diverged']} / {r['rollouts']}"]
        for name in names:
            t = r["test_sets"].get(name)
            if t is None:
                cells.append("–")
                continue
            ratio = t["5000dT_median"] / base if base and np.isfinite(base) else float("nan")
            cells.append(f"{_fmt(t['5000dT_median'])} ({_fmt(ratio, 2)}×), {t['diverged']} / {t['rollouts']}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _per_state(runs: dict, size: int) -> list[str]:
    lines = [f"## Per-state errors, {size} training trajectories (non-diverged rollouts)", ""]
    lines.append("| model | " + " | ".join(f"NRMSE {n}" for n in STATE_NAMES) + " |")
    lines.append("|---|" + "---|" * len(STATE_NAMES))
    for k in _kinds(runs):
        r = runs.get(f"{k}@{size}")
        if r:
            lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in r["nrmse"]) + " |")
    lines += [
        "",
        "| model | " + " | ".join(f"FIT% {n}" for n in STATE_NAMES) + " |",
        "|---|" + "---|" * len(STATE_NAMES),
    ]
    for k in _kinds(runs):
        r = runs.get(f"{k}@{size}")
        if r:
            lines.append(f"| {k} | " + " | ".join(_fmt(v, 3) for v in r["fit_percent"]) + " |")
    lines.append("")
    return lines
