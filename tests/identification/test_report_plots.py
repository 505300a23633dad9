"""The study's figures are readable: every series in a legend, titles and axis labels, no overlapping tick
labels, panels large enough, drawn from a small synthetic ``results.json``."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage
from matplotlib.transforms import Bbox

from identification.estimator import KINDS
from identification.metrics import TRUE_STRUCTURE
from identification.report import figures, write_figures
from plant.signals import INPUT_NAMES, STATE_NAMES

SIZES = (10, 40)
DPI = 110  # identification.report saves at this resolution


def _run(kind: str, n: int, rng: np.random.Generator) -> dict:
    curve = np.cumsum(rng.uniform(1e-4, 1e-3, 501)).tolist()
    return {
        "kind": kind,
        "n_train": n,
        "median_curve": curve,
        "curve_stride": 10,
        "diverged_by_5000dT": int(rng.integers(0, 500)),
        "rollouts": 1000,
        "structure_jacobian": {"f1": float(rng.uniform())},
        "dependency_fraction": rng.uniform(size=(8, 13)).tolist(),
    }


@pytest.fixture(scope="module")
def results() -> dict:
    rng = np.random.default_rng(0)
    runs = {f"{k}@{n}": _run(k, n, rng) for n in SIZES for k in KINDS}
    sweep = {
        f"{lam:g}": {"lambda": lam, "nonzero_1e-2": 1500.0 / (1 + i), "5000dT_median": 0.1 * (i + 1), "n_train": 10}
        for i, lam in enumerate((1e-5, 1e-4, 1e-3))
    }
    return {"runs": runs, "lambda_sweep": sweep, "config": {"sweep_members": 3}}


@pytest.fixture(scope="module")
def figs(results):
    out = figures(results)
    for fig in out.values():
        FigureCanvasAgg(fig).draw()
    return out


def _labels(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def _assert_no_overlap(fig) -> None:
    renderer = fig.canvas.get_renderer()
    around = [fig._suptitle, fig._supxlabel, fig._supylabel, *fig.legends]  # private: no public getter
    boxes = [a.get_window_extent(renderer) for a in around if a is not None and a.get_visible()]
    for a, b in combinations(boxes, 2):
        assert Bbox.intersection(a, b) is None, ("figure title, labels and legends overlap", a, b)
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in ticks if t.get_visible() and t.get_text()]
            for a, b in combinations(boxes, 2):
                both = Bbox.intersection(a, b)
                assert both is None or both.width * both.height < 1.0, (ax.get_title(), a, b)


def _pixels(fig, ax) -> tuple[float, float]:
    box = ax.get_window_extent(fig.canvas.get_renderer())
    return box.width * DPI / fig.dpi, box.height * DPI / fig.dpi


def test_every_figure_has_a_title_axis_labels_and_no_overlapping_tick_labels(figs):
    assert set(figs) == {"error_vs_horizon.png", "divergence.png", "structure.png", "nonzeros_vs_lambda.png"}
    for name, fig in figs.items():
        _assert_no_overlap(fig)
        drawn = [ax for ax in fig.axes if ax.axison and ax.get_images() == [] and ax.get_label() != "<colorbar>"]
        for ax in drawn:  # a twin axis (same x axis) carries only its y label
            twins = ax.get_shared_x_axes().get_siblings(ax)
            assert ax.get_ylabel() and any(t.get_xlabel() and t.get_title() for t in twins), name


def test_divergence_names_every_kind_and_size_and_labels_every_bar(figs):
    fig = figs["divergence.png"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == list(KINDS)
    assert set(_labels(fig)) == {f"{n} training trajectories" for n in SIZES} | {"goal: at most 1 %"}
    values = [t.get_text() for t in ax.texts]
    assert len(values) == len(KINDS) * len(SIZES) and all(v.endswith(" %") for v in values)
    # The value labels fit inside the plot.
    right = ax.get_window_extent().x1
    assert all(t.get_window_extent().x1 <= right for t in ax.texts)


def test_lambda_sweep_has_one_legend_for_both_axes_and_coloured_axes(figs):
    fig = figs["nonzeros_vs_lambda.png"]
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    left, right = fig.axes
    (nz,), (err,) = left.get_lines(), right.get_lines()
    assert _labels(fig) == [nz.get_label(), err.get_label()]
    assert nz.get_color() != err.get_color()
    assert left.yaxis.label.get_color() == nz.get_color() and right.yaxis.label.get_color() == err.get_color()
    assert "3 members" in left.get_ylabel()


def test_structure_panels_are_large_with_named_ticks_and_a_colour_bar(figs):
    fig = figs["structure.png"]
    panels = [ax for ax in fig.axes if any(isinstance(a, AxesImage) for a in ax.get_images())]
    assert len(panels) == 1 + len(KINDS)  # the true structure, then one per kind
    for ax in panels:
        width, height = _pixels(fig, ax)
        assert width >= 300 and height >= 180, (ax.get_title(), width, height)
        assert [t.get_text() for t in ax.get_xticklabels()] == [*STATE_NAMES, *INPUT_NAMES]
        left = ax.get_position().x0 == min(a.get_position().x0 for a in panels)
        rows = [t.get_text() for t in ax.get_yticklabels()]
        assert rows == ([f"d{n}/dt" for n in STATE_NAMES] if left else []), ax.get_title()  # named once a row
        assert ax.get_title()
    assert fig.get_supxlabel() and fig.get_supylabel()
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "share of ensemble members" in bars[0].get_ylabel()
    assert "red dots: the true dependencies" in fig.get_suptitle()
    (panel,) = [ax for ax in panels if ax.get_title() == "true structure (plant.md)"]
    assert len(panel.collections[0].get_offsets()) == TRUE_STRUCTURE.sum()


def test_horizon_legend_lists_every_kind(figs):
    assert _labels(figs["error_vs_horizon.png"]) == list(KINDS)


def test_write_figures_saves_pngs_without_a_sweep_and_refuses_empty_results(results, tmp_path):
    two = {key: r for key, r in results["runs"].items() if r["kind"] in ("dense", "l1")}
    no_sweep = {"runs": two, "config": results["config"]}
    paths = write_figures(no_sweep, tmp_path)
    assert sorted(p.name for p in paths) == ["divergence.png", "error_vs_horizon.png", "structure.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no finished run"):
        figures({"runs": {}})
