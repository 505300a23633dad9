"""The closed-loop report's trajectory figure is readable: one legend with every controller, the window and the
target; units on every axis; no overlapping labels; panels large enough."""

from __future__ import annotations

from itertools import combinations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from controller.closed_loop import Scenario, Trace, operating_initial_state
from controller.report import trajectory_figure
from plant.signals import U

DPI = 90  # controller.report saves at this resolution


def _trace(name: str, offset: float) -> Trace:
    steps = 720  # 2 h of 10 s steps
    x0 = operating_initial_state(0)
    x = x0 * (1.0 + offset * np.linspace(0.0, 1.0, steps + 1))[:, None]
    u = np.zeros((steps, 5))
    u[:, U.CURRENT], u[:, U.ACD] = 140_000.0, 0.05 + offset
    u[::30, U.FEED_AL2O3], u[::90, U.FEED_ALF3] = 1.5, 0.4
    return Trace(controller=name, scenario=Scenario(hours=2.0, seed=0), x=x, y=x, u=u, dt=10.0)


def test_trajectory_figure_has_one_legend_units_and_readable_panels():
    traces = [_trace("baseline", 0.0), _trace("sparse", 1e-3)]
    fig = trajectory_figure(traces)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["baseline", "sparse", "window", "target"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    # the legend and the title stand apart
    assert not legend.get_window_extent(renderer).overlaps(fig._suptitle.get_window_extent(renderer))  # private
    assert len(fig.axes) == 8
    for ax in fig.axes:
        assert "(" in ax.get_ylabel() and ax.get_ylabel().endswith(")"), ax.get_ylabel()  # a unit
        box = ax.get_window_extent(renderer)
        assert box.width * DPI / fig.dpi >= 400 and box.height * DPI / fig.dpi >= 150, ax.get_ylabel()
        assert len(ax.get_lines()) >= len(traces)
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
        assert not any(a.overlaps(b) for a, b in combinations(ticks, 2)), ax.get_ylabel()
    bottom = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in bottom] == ["hours of plant time"] * 2
    # A controller that follows another one exactly stays visible: the earlier line is the wider one.
    widths = [line.get_linewidth() for line in fig.axes[0].get_lines()[: len(traces)]]
    assert widths[0] > widths[1]
