"""Where a prediction stops being trustworthy: the cell's valid domain, the model's training envelope, and
the members that diverge (what Predict reports per scenario, instead of silence).

Three checks, each cheap for a nominal batch and exact for a flagged one:

- **Domain** (:func:`plant.domain.check_domain`, the plant's own guard: side ledge melted, alumina or AlF3
  outside their windows, a non-finite state) on the ensemble mean, at every step.
- **Training envelope** (:class:`identification.data.Envelope`, per-state ranges of the model's training data)
  on the ensemble mean, at every step; and on the inputs ``x0`` and ``u`` (:func:`input_warnings`).
- **Diverged members**: a member diverges when its own trajectory leaves the valid domain or becomes
  non-finite. The mean and the population spread bound every member: ``|x_m - mean| <= sqrt(M) * spread``
  (one member's squared deviation is at most the sum of all, ``M * spread**2``). The domain test is monotone
  in each state (alumina and AlF3 percentages rise with their own mass and fall with the others), so a
  scenario whose bounding box stays inside the domain has no diverged member; the others are rolled out
  again member by member (the same engine: the same numbers) and each member is checked.

The rollout engine's summary does all three on the way (:class:`identification.rollout.Exits`: each member's
and the mean's first step outside the domain, the mean's first step outside the envelope's :func:`envelope_box`,
the same decisions at every step), so with those :func:`scenario_validity` only describes the scenarios they
flag. Without them (another engine, other limits) each check first works on per-scenario extremes over the
horizon (a reduction, no temporaries), and looks at single steps only for the scenarios those extremes flag.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alutwin.cbuild import BuildError, LibraryCache, build_shared_library, package_source
from identification.data import Envelope
from identification.rollout import Box, Exits
from plant.domain import Fault, check_domain
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.signals import INPUTS, STATES, X
from twin.results import EnvelopeExcess, ScenarioValidity

__all__ = ["EnvelopeExcess", "ScenarioValidity", "envelope_box", "input_warnings", "scenario_validity"]

_STATE_NAMES = tuple(s.name for s in STATES)
_INPUT_NAMES = tuple(s.name for s in INPUTS)
_DOMAIN_STATES = (X.M_LEDGE, X.M_AL2O3, X.M_ALF3, X.M_CRYOLITE)
_P = ctypes.c_void_p
_NOMINAL = ScenarioValidity()
_MAX_BOXES = 64  # envelope boxes remembered (one per served model and margin)
_boxes: dict[tuple[int, float], tuple[Envelope, Box]] = {}


@dataclass(frozen=True)
class _Scans:
    """The compiled scans of ``validity.c`` (one pass each instead of several numpy passes)."""

    path: Path
    handle: ctypes.CDLL

    def extremes(self, mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, spread = np.ascontiguousarray(mean, np.float64), np.ascontiguousarray(spread, np.float64)
        b, t = mean.shape[:2]
        lo, hi, smax = np.empty((b, 8)), np.empty((b, 8)), np.empty((b, 8))
        self.handle.alutwin_extremes(b, t, *(a.ctypes.data for a in (mean, spread, lo, hi, smax)))
        return lo, hi, smax

    def first_outside(self, x: np.ndarray, limits: DomainLimits) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float64)
        t = x.shape[-2]
        out = np.empty(x.shape[:-2], dtype=np.int64)
        a, f = limits.alumina_pct, limits.alf3_pct
        self.handle.alutwin_first_outside(
            out.size, t, x.ctypes.data, limits.min_ledge_mass, a[0], a[1], f[0], f[1], out.ctypes.data
        )
        return out


def _load_scans() -> _Scans:
    path, _ = build_shared_library(package_source(__package__, "validity.c"), "alutwin_validity", ("-O2",))
    handle = ctypes.CDLL(str(path))
    ll, d = ctypes.c_longlong, ctypes.c_double
    handle.alutwin_extremes.argtypes = [ll, ll, _P, _P, _P, _P, _P]
    handle.alutwin_extremes.restype = None
    handle.alutwin_first_outside.argtypes = [ll, ll, _P, d, d, d, d, d, _P]
    handle.alutwin_first_outside.restype = None
    return _Scans(path, handle)


_SCANS: LibraryCache[_Scans, BuildError] = LibraryCache(_load_scans, BuildError, maxsize=1, per_compiler=False)


def _scans(use_c: bool) -> _Scans | None:
    """The compiled scans where wanted and a compiler is found, else None (numpy)."""
    lib = _SCANS.get_or_error() if use_c else None
    return None if lib is None or isinstance(lib, Exception) else lib


def extremes(mean: np.ndarray, spread: np.ndarray, use_c: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scenario and state, over the steps: the lowest and highest mean and the largest spread,
    ``(B, 8)`` each (NaN where a state is ever non-finite)."""
    lib = _scans(use_c)
    if lib is not None:
        return lib.extremes(mean, spread)
    with np.errstate(invalid="ignore"):
        lo, hi, smax = _over_steps(mean, np.minimum), _over_steps(mean, np.maximum), _over_steps(spread, np.maximum)
        bad = ~np.isfinite(lo + hi + smax)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi), np.where(bad, np.nan, smax)


def first_outside(x: np.ndarray, limits: DomainLimits = DEFAULT_LIMITS, use_c: bool = True) -> np.ndarray:
    """The first step at which each trajectory of ``x`` ``(..., T, 8)`` leaves the valid domain (the decision of
    :func:`plant.domain.check_domain`), -1 where it stays inside: ``x.shape[:-2]``."""
    lib = _scans(use_c)
    if lib is not None:
        return lib.first_outside(x, limits)
    return _first_steps(check_domain(x, limits) != 0)


def _pct_bounds(
    a: tuple[np.ndarray, np.ndarray], f: tuple[np.ndarray, np.ndarray], c: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest ``100 a / (a + f + c)`` over the boxes ``a = (lo, hi)``, ``f``, ``c`` (NaN where a
    denominator can reach zero: the percentage is then unbounded)."""
    with np.errstate(all="ignore"):
        d_lo, d_hi = a[0] + f[1] + c[1], a[1] + f[0] + c[0]
        low = np.where(d_lo > 0, 100.0 * a[0] / d_lo, np.nan)
        high = np.where(d_hi > 0, 100.0 * a[1] / d_hi, np.nan)
    return low, high


def _may_leave(lo: np.ndarray, hi: np.ndarray, limits: DomainLimits) -> np.ndarray:
    """Whether a state somewhere in the box ``[lo, hi]`` (arrays ``(..., 8)``) may lie outside the domain."""
    box = {i: (lo[..., i], hi[..., i]) for i in _DOMAIN_STATES}
    a, f, c = box[X.M_AL2O3], box[X.M_ALF3], box[X.M_CRYOLITE]
    pa_lo, pa_hi = _pct_bounds(a, f, c)
    pf_lo, pf_hi = _pct_bounds(f, a, c)
    with np.errstate(invalid="ignore"):
        inside = (
            np.isfinite(lo).all(-1)
            & np.isfinite(hi).all(-1)
            & (box[X.M_LEDGE][0] >= limits.min_ledge_mass)
            & (pa_lo >= limits.alumina_pct[0])
            & (pa_hi <= limits.alumina_pct[1])
            & (pf_lo >= limits.alf3_pct[0])
            & (pf_hi <= limits.alf3_pct[1])
        )
    return ~inside


def _over_steps(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``op.reduce(a, axis=1)`` of ``a`` ``(B, T, n)`` as a tree of elementwise ``op`` on halves: the same
    values (min and max are exact, NaN propagates), several times faster than numpy's reduction over a middle
    axis with a short last one."""
    while a.shape[1] > 1:
        n = a.shape[1]
        half = n // 2
        b = op(a[:, :half], a[:, half : 2 * half])
        if n % 2:
            b[:, 0] = op(b[:, 0], a[:, -1])
        a = b
    return a[:, 0]


def _widened(envelope: Envelope, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The envelope widened by ``margin`` of its width on each side: x low/high, u low/high."""
    wx = _width(envelope.x_low, envelope.x_high)
    wu = _width(envelope.u_low, envelope.u_high)
    return (
        envelope.x_low - margin * wx,
        envelope.x_high + margin * wx,
        envelope.u_low - margin * wu,
        envelope.u_high + margin * wu,
    )


def envelope_box(envelope: Envelope | None, margin: float = 0.0) -> Box | None:
    """The states' box the ensemble mean must stay in: ``envelope``'s state ranges widened by ``margin`` of
    their width on each side (None without an envelope). Remembered per envelope and margin: the same arrays
    (read-only) each time, so a prediction spends nothing on it."""
    if envelope is None:
        return None
    key = (id(envelope), float(margin))
    found = _boxes.get(key)
    if found is not None and found[0] is envelope:
        return found[1]
    low, high = _widened(envelope, margin)[:2]
    low.flags.writeable = high.flags.writeable = False
    if len(_boxes) >= _MAX_BOXES:
        _boxes.clear()
    box = (low, high)
    _boxes[key] = (envelope, box)
    return box


def scenario_validity(
    mean: np.ndarray,
    spread: np.ndarray,
    n_members: int,
    envelope: Envelope | None,
    rollout: Callable[[np.ndarray], np.ndarray],
    members: np.ndarray | None = None,
    limits: DomainLimits = DEFAULT_LIMITS,
    margin: float = 0.0,
    use_c: bool = True,
    exits: Exits | None = None,
) -> list[ScenarioValidity]:
    """The validity of each scenario of a prediction.

    Parameters
    ----------
    mean, spread : ``(B, H + 1, 8)``, the ensemble mean and population spread at every step.
    n_members : M.
    envelope : the model's training envelope (None: not checked).
    rollout : every member's trajectory of the scenarios at given indices, ``(M, b, H + 1, 8)`` (called only
        for scenarios whose bounds flag a possible divergence, only when ``members`` and ``exits`` are None).
    members : every member's trajectory ``(M, B, H + 1, 8)``, when already computed.
    limits : the valid domain.
    margin : a state counts as outside the envelope beyond ``margin`` envelope widths past either end.
    use_c : scan with the compiled helpers where a C compiler is found (else, or when False, numpy: the same
        decisions).
    exits : where the rollout's members and mean left the domain (the summary's); used, instead of the
        bounds and scans, when it was computed for ``limits`` and ``envelope_box(envelope, margin)``.
    """
    if exits is not None:
        box = envelope_box(envelope, margin)
        if _exits_fit(exits, limits, box):
            return _from_exits(mean, exits, limits, box)
    b = mean.shape[0]
    with np.errstate(invalid="ignore"):
        lo_t, hi_t, smax = extremes(mean, spread, use_c)  # (B, 8); NaN where non-finite
        reach = math.sqrt(n_members) * smax
    # a scenario whose extremes stay inside cannot leave at any single step (monotone test, see module doc)
    mean_flag = _may_leave(lo_t, hi_t, limits)
    member_flag = mean_flag | _may_leave(lo_t - reach, hi_t + reach, limits)
    env_flag: np.ndarray = np.zeros(b, dtype=bool)
    if envelope is not None:
        x_low, x_high = _widened(envelope, margin)[:2]
        with np.errstate(invalid="ignore"):
            env_flag = np.asarray(~((lo_t >= x_low) & (hi_t <= x_high)).all(-1))
    out = [_NOMINAL] * b
    if not (member_flag.any() or env_flag.any()):
        return out
    suspects = np.flatnonzero(member_flag)
    if suspects.size and members is None:  # the box at each step, not over the horizon: fewer re-runs
        k = math.sqrt(n_members) * spread[suspects]
        m = mean[suspects]
        with np.errstate(invalid="ignore"):
            suspects = suspects[_may_leave(m - k, m + k, limits).any(-1)]
    traj: np.ndarray | None = None  # (M, suspects, H + 1, 8)
    if members is not None:
        traj = members[:, suspects]
    elif suspects.size:
        traj = rollout(suspects)
    fields: dict[int, dict[str, object]] = {}
    mean_idx = np.flatnonzero(mean_flag)
    if mean_idx.size:  # the plant's guard on the flagged scenarios' means, at every step
        for i, step in zip(mean_idx, first_outside(mean[mean_idx], limits, use_c), strict=True):
            if step >= 0:
                reason = Fault(int(check_domain(mean[i, step], limits))).describe(limits)
                fields.setdefault(int(i), {}).update(domain_exit_step=int(step), domain_reason=reason)
    env_idx = np.flatnonzero(env_flag)
    if env_idx.size:
        with np.errstate(invalid="ignore"):
            outside = ~((mean[env_idx] >= x_low) & (mean[env_idx] <= x_high))  # (s, H + 1, 8)
        for j, (i, step) in enumerate(zip(env_idx, _first_steps(np.asarray(outside.any(-1))), strict=True)):
            if step >= 0:
                names = tuple(_STATE_NAMES[k] for k in np.flatnonzero(outside[j, step]))
                fields.setdefault(int(i), {}).update(envelope_exit_step=int(step), envelope_signals=names)
    if traj is not None and suspects.size:
        first = first_outside(traj, limits, use_c)  # (M, s): each member's first step outside
        for j, i in enumerate(suspects):
            diverged = tuple(int(m) for m in np.flatnonzero(first[:, j] >= 0))
            if diverged:
                fields.setdefault(int(i), {}).update(
                    diverged_members=diverged, first_divergence_step=int(first[list(diverged), j].min())
                )
    for scenario, found in fields.items():
        out[scenario] = ScenarioValidity(**found)  # type: ignore[arg-type]
    return out


def _exits_fit(exits: Exits, limits: DomainLimits, box: Box | None) -> bool:
    """Whether ``exits`` were computed for the domain ``limits`` and the mean's box ``box``."""
    if not (exits.limits is limits or exits.limits == limits) or (exits.box is None) != (box is None):
        return False
    if box is None or exits.box is None or exits.box is box:
        return True
    return all(a is b or np.array_equal(a, b) for a, b in zip(exits.box, box, strict=True))


def _from_exits(mean: np.ndarray, exits: Exits, limits: DomainLimits, box: Box | None) -> list[ScenarioValidity]:
    """The validity of each scenario from the summary's ``exits``: only the scenarios they flag are described."""
    out = [_NOMINAL] * mean.shape[0]
    for i in exits.flagged().tolist():
        found: dict[str, object] = {}
        step = int(exits.mean[i])
        if step >= 0:
            reason = Fault(int(check_domain(mean[i, step], limits))).describe(limits)
            found.update(domain_exit_step=step, domain_reason=reason)
        if box is not None and exits.mean_box is not None and (step := int(exits.mean_box[i])) >= 0:
            x = mean[i, step]
            with np.errstate(invalid="ignore"):
                outside = np.flatnonzero(~((x >= box[0]) & (x <= box[1])))
            found.update(envelope_exit_step=step, envelope_signals=tuple(_STATE_NAMES[k] for k in outside))
        first = exits.members[:, i]  # (M,)
        diverged = np.flatnonzero(first >= 0)
        if diverged.size:
            found.update(diverged_members=tuple(diverged.tolist()), first_divergence_step=int(first[diverged].min()))
        out[i] = ScenarioValidity(**found)  # type: ignore[arg-type]
    return out


def _first_steps(flags: np.ndarray) -> np.ndarray:
    """Index of the first true entry along the last axis of ``flags``, -1 where none."""
    return np.where(flags.any(-1), np.argmax(flags, axis=-1), -1)


def _width(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Envelope widths, never zero (a signal constant in training counts any change as far outside)."""
    return np.maximum(high - low, 1e-9 * np.maximum(1.0, np.abs(high)))


def _excesses(
    values: np.ndarray, low: np.ndarray, high: np.ndarray, margin: float, array: str, names: tuple[str, ...]
) -> list[EnvelopeExcess]:
    """The warnings of ``values`` ``(..., n)`` against ``[low, high]`` (n,) widened by ``margin`` widths, one per
    signal outside; the excess is counted from the envelope itself."""
    flat = values.reshape(1, -1, values.shape[-1])
    width = _width(low, high)
    lo_w, hi_w = low - margin * width, high + margin * width
    if not ((_over_steps(flat, np.minimum)[0] < lo_w) | (_over_steps(flat, np.maximum)[0] > hi_w)).any():
        return []
    flat = flat[0]
    dist = np.maximum(low - flat, flat - high) / width  # (S, n): > 0 outside the envelope itself
    out = []
    for k in np.flatnonzero((dist > margin).any(0)):
        worst = int(np.argmax(dist[:, k]))
        where = np.unravel_index(worst, values.shape[:-1])
        out.append(
            EnvelopeExcess(
                array,
                names[k],
                int(np.count_nonzero(dist[:, k] > margin)),
                float(flat[worst, k]),
                float(low[k]),
                float(high[k]),
                float(dist[worst, k]),
                int(where[0]),
                int(where[1]) if len(where) > 1 else 0,
            )
        )
    return out


def input_warnings(
    x0: np.ndarray, u: np.ndarray, envelope: Envelope | None, margin: float = 0.0
) -> list[EnvelopeExcess]:
    """The inputs of a prediction (``x0`` ``(B, 8)``, ``u`` ``(B, H, 5)``) farther than ``margin`` envelope
    widths outside the training envelope."""
    if envelope is None:
        return []
    return _excesses(x0, envelope.x_low, envelope.x_high, margin, "x0", _STATE_NAMES) + _excesses(
        u, envelope.u_low, envelope.u_high, margin, "u", _INPUT_NAMES
    )
