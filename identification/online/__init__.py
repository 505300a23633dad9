"""Online identification: from a plant's recent measurements to a challenger model, and the gate that decides
whether the challenger may replace the champion.

Pure learning, no service: the twin's re-fit worker (:mod:`twin.online.worker`) reads the historian, calls these
functions and talks to the registry.

- ``segments``: :func:`segments_from_window` turns one cell's accepted samples into trajectories
  (:class:`Segment`), :func:`split_holdout` cuts them into training and held-out parts,
  :func:`rollout_windows` gives the evaluation's start points (:func:`count_windows` counts them) and
  :func:`step_ranges` each cell's first and last step.
- ``screening``: :func:`screen` looks for stuck (flatline) and offset (level shift) sensors with the champion's
  one-step prediction; a flagged cell is excluded from the flagged sample on.
- ``refitting``: :func:`refit` trains a challenger, a ``"warm"`` start inside the champion's sparsity pattern or
  a ``"fresh"`` ensemble of its kind, in the champion's normalisation.
- ``scoring``: :func:`evaluate` scores a model by multi-step rollout error (AN-RFMSE over the horizon) on
  held-out segments, with divergence counted and left out of the means.
- ``gate``: :class:`Gate` promotes a challenger only if it is finite, diverges no more often, is better by a
  margin overall and on every cell within a tolerance, and is structurally sane; it returns a
  :class:`Decision` holding every figure and the reason.
"""

from identification.online.common import check_positive
from identification.online.gate import Decision, Gate
from identification.online.refitting import REFIT_MODES, RefitConfig, RefitError, RefitResult, refit
from identification.online.scoring import HORIZON_1H, Evaluation, evaluate
from identification.online.screening import ScreenConfig, ScreenReport, SensorFault, screen
from identification.online.segments import (
    Segment,
    WindowLike,
    count_windows,
    rollout_windows,
    segments_from_window,
    split_holdout,
    step_ranges,
)

__all__ = [
    "HORIZON_1H",
    "REFIT_MODES",
    "Decision",
    "Evaluation",
    "Gate",
    "RefitConfig",
    "RefitError",
    "RefitResult",
    "ScreenConfig",
    "ScreenReport",
    "Segment",
    "SensorFault",
    "WindowLike",
    "check_positive",
    "count_windows",
    "evaluate",
    "refit",
    "rollout_windows",
    "screen",
    "segments_from_window",
    "split_holdout",
    "step_ranges",
]
