"""The safety layer around the NMPC: status checks, the shifted last feasible plan, the fallback to the cell's
own controllers, clipping to bounds and rate limits, and a watchdog on the measurements.

A decision is a vector ``v`` (3,) of manipulated inputs (``controller.problem.MANIPULATED`` order) where NaN
means "automatic" (the cell's own controller decides that input).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.config import SafetyConfig
from controller.mpc import NMPC, Plan
from controller.problem import MANIPULATED
from plant.params import DEFAULT_PARAMS

__all__ = ["MODES", "Decision", "SafeController", "Watchdog", "clip_inputs"]

log = logging.getLogger(__name__)

MODES = ("mpc", "shifted", "fallback")
"""What decided an interval's inputs: a fresh MPC solution, the shifted last feasible plan, or the cell's own
controllers (feeds automatic, ACD ramped back to the plant's default at the rate limit)."""

_NV = len(MANIPULATED)
_LOW = np.array([m.low for m in MANIPULATED])  # (3,)
_HIGH = np.array([m.high for m in MANIPULATED])  # (3,)


def clip_inputs(
    v: np.ndarray, acd_prev: float, low: np.ndarray, high: np.ndarray, acd_rate: float
) -> tuple[np.ndarray, bool]:
    """Clip the finite entries of ``v`` (3,) to ``[low, high]`` and the ACD to ``acd_prev +- acd_rate``.

    NaN entries (automatic) pass through. Returns the clipped vector and whether anything moved.
    """
    v = np.asarray(v, dtype=np.float64).copy()
    auto = np.isnan(v)
    out = np.where(auto, np.nan, np.clip(np.where(auto, 0.0, v), low, high))
    if not auto[2] and np.isfinite(acd_prev):
        out[2] = float(np.clip(out[2], acd_prev - acd_rate, acd_prev + acd_rate))
    span = high - low  # (3,)
    moved = bool(np.any(np.abs(np.where(auto, 0.0, out - v)) > 1e-6 * span))  # beyond the solver's tolerance
    return out, moved


@dataclass(frozen=True)
class Decision:
    """The inputs for one control interval.

    Attributes
    ----------
    v : (3,) manipulated inputs; NaN = automatic.
    mode : one of :data:`MODES`.
    plan : the solve of this interval (also when it failed), or None when none ran.
    events : what happened (failures, clipping), in words.
    """

    v: np.ndarray
    mode: str
    plan: Plan | None
    events: tuple[str, ...] = ()


@dataclass
class _Counters:
    solves: int = 0
    failures: int = 0
    shifted: int = 0
    fallback: int = 0
    clipped: int = 0
    guarded: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


class SafeController:
    """The NMPC behind a safety layer.

    Parameters
    ----------
    mpc : NMPC
        The optimiser.
    config : SafetyConfig
        How long the shifted plan is used before falling back.
    default_acd : float
        m, the ACD the cell's own control holds (the plant's default); the fallback ramps back to it.
    inject_failure : callable, optional
        ``k -> bool``: treat solve number ``k`` (0-based) as failed without running it (tests, drills).

    Notes
    -----
    Every solve's status is checked; a failed solve (IPOPT status, non-finite numbers, or an injected
    failure) applies the next move of the last feasible plan for up to ``config.shifted_intervals``
    intervals, then the cell's own controllers: feeds automatic and the ACD moved back to ``default_acd`` at
    the rate limit. The next successful solve takes over again. Every decision is clipped to the bounds and
    the ACD rate limit, and never holds a non-finite value other than NaN for "automatic".
    """

    def __init__(
        self,
        mpc: NMPC,
        config: SafetyConfig | None = None,
        *,
        default_acd: float = 0.05,
        inject_failure: Callable[[int], bool] | None = None,
    ) -> None:
        self.mpc = mpc
        self.config = config or SafetyConfig()
        self.default_acd = float(default_acd)
        self.inject_failure = inject_failure
        self.counters = _Counters()
        self._plan: Plan | None = None
        self._age = 0
        self.plans: list[Plan] = []  # every solve, in order

    def _log(self, step: int, kind: str, text: str) -> str:
        self.counters.events.append({"step": step, "event": kind, "detail": text})
        log.warning("step %d: %s: %s", step, kind, text)
        return f"{kind}: {text}"

    def decide(self, y: np.ndarray, current: float, v_prev: np.ndarray, acd_prev: float, step: int = 0) -> Decision:
        """The inputs for the next interval.

        Parameters
        ----------
        y : (8,) measured state.
        current : A, the measured line current.
        v_prev : (3,) the manipulated inputs applied over the last interval (its mean feeds, its last ACD).
        acd_prev : m, the ACD applied now (the rate limit's reference).
        step : the plant step, for the event log.
        """
        events: list[str] = []
        k = self.counters.solves
        self.counters.solves += 1
        if self.inject_failure is not None and self.inject_failure(k):
            n = self.mpc.config.horizon
            plan = Plan(
                np.full((n, _NV), np.nan), np.full((n + 1, 8), np.nan), False, "injected failure", 0, 0.0, np.nan
            )
        else:
            plan = self.mpc.solve(y, current, np.clip(v_prev, self.mpc.v_low, self.mpc.v_high))
        self.plans.append(plan)
        low, high = self.mpc.v_low, self.mpc.v_high
        if plan.success and np.all(np.isfinite(plan.v)):
            self._plan, self._age = plan, 0
            v, mode = plan.v[0], "mpc"
        else:
            self.counters.failures += 1
            events.append(self._log(step, "solve failed", plan.status))
            last = self._plan
            if last is not None and self._age + 1 < len(last.v) and self._age < self.config.shifted_intervals:
                self._age += 1
                v, mode = last.v[self._age], "shifted"
                self.counters.shifted += 1
                events.append(self._log(step, "shifted plan", f"move {self._age} of the last feasible plan"))
            else:
                self._plan = None
                self.counters.fallback += 1
                rate, target = self.mpc.config.acd_rate, self.default_acd
                if not np.isfinite(acd_prev) or abs(acd_prev - target) <= rate:
                    acd = target
                else:
                    acd = acd_prev + np.sign(target - acd_prev) * rate
                v = np.array([np.nan, np.nan, acd])
                mode = "fallback"
                events.append(self._log(step, "fallback", "feeds to the cell's own controllers, ACD to the default"))
                low = np.minimum(low, _LOW)
                high = np.maximum(high, _HIGH)
        v = self._alumina_guard(v, y, current, step, events)
        v, moved = clip_inputs(v, acd_prev, low, high, self.mpc.config.acd_rate)
        if moved:
            self.counters.clipped += 1
            events.append(self._log(step, "clipped", f"inputs clipped to the bounds or the ACD rate: {v.tolist()}"))
        return Decision(v, mode, plan, tuple(events))

    def _alumina_guard(self, v: np.ndarray, y: np.ndarray, current: float, step: int, events: list[str]) -> np.ndarray:
        """``v`` with its alumina feed raised where the alumina would otherwise end the interval below
        ``SafetyConfig.alumina_guard_pct`` (the measured alumina, the feed held against the consumption ``k3 I``);
        an automatic feed is left to the cell's own controllers."""
        guard = self.config.alumina_guard_pct
        y = np.asarray(y, dtype=np.float64)
        if guard <= 0 or not np.isfinite(v[0]) or y.shape != (8,) or not np.all(np.isfinite(y)) or current <= 0:
            return v
        bath = y[1] + y[2] + y[3]  # kg: alumina + AlF3 + cryolite
        need = DEFAULT_PARAMS.k3 * float(current) + (guard / 100.0 * bath - y[1]) / self.mpc.interval_s  # kg/s
        if v[0] >= need:
            return v
        self.counters.guarded += 1
        text = f"alumina {100.0 * y[1] / bath:.2f} % would end below {guard:g} %: feed {v[0]:.4f} -> {need:.4f} kg/s"
        events.append(self._log(step, "alumina guard", text))
        out = np.array(v, dtype=np.float64)
        out[0] = need  # clipped to the feed's bounds with the rest
        return out

    def summary(self) -> dict[str, Any]:
        """Counts of solves, failures, shifted and fallback intervals, clips, and the event log."""
        c = self.counters
        return {
            "solves": c.solves,
            "failures": c.failures,
            "shifted_intervals": c.shifted,
            "fallback_intervals": c.fallback,
            "clipped": c.clipped,
            "alumina_guarded": c.guarded,
            "events": list(c.events),
        }


class Watchdog:
    """Calls ``on_expire`` once when :meth:`feed` has not been called for ``timeout_s`` seconds.

    It re-arms at the next :meth:`feed`. Runs a daemon thread until :meth:`close`.

    Parameters
    ----------
    timeout_s : float
        Seconds of silence allowed (> 0).
    on_expire : callable
        The safe-state action (e.g. hand every input back to the cell's own controllers).
    clock : callable
        Monotonic clock (tests may pass their own).
    """

    def __init__(
        self, timeout_s: float, on_expire: Callable[[], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and np.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.on_expire = on_expire
        self.clock = clock
        self.expired = 0  # how many times it fired
        self._last = clock()
        self._armed = True
        self._held = 0.0  # while held: the longer silence allowed (hold)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpc-watchdog", daemon=True)
        self._thread.start()

    def feed(self) -> None:
        """A measurement arrived."""
        with self._lock:
            self._last = self.clock()
            self._armed = True

    @contextlib.contextmanager
    def hold(self, limit_s: float) -> Iterator[None]:
        """While the block runs (the controllers deciding: no measurement is read then), allow up to ``limit_s``
        of silence instead of ``timeout_s``; afterwards the silence counts from the block's end. A decision that
        takes longer than ``limit_s`` (e.g. one control interval) still hands the cell back."""
        with self._lock:
            self._held = max(float(limit_s), self.timeout_s)
        try:
            yield
        finally:
            with self._lock:
                self._held = 0.0
                self._last = self.clock()

    def _run(self) -> None:
        period = min(self.timeout_s / 4.0, 0.5)
        while not self._stop.wait(period):
            with self._lock:
                allowed = self._held or self.timeout_s
                fire = self._armed and self.clock() - self._last > allowed
                if fire:
                    self._armed = False
            if fire:
                self.expired += 1
                log.error("no measurement for %.1f s: inputs handed back to the cell's own controllers", allowed)
                try:
                    self.on_expire()
                except Exception as exc:  # the action itself failed (plant unreachable): say so, keep watching
                    log.error("the watchdog's safe-state action failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
