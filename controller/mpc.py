"""The NMPC: a multiple-shooting NLP over control intervals, solved by IPOPT, built once per model.

Decision variables (all scaled to about unit size): the states at the ends of the ``N`` control intervals
``z_k = (x_k - centre) / half_range`` (``plant.signals.STATES`` typical ranges), the manipulated inputs
``w_k = (v_k - low) / span`` in ``[0, 1]`` (``controller.problem.MANIPULATED``) and one slack per window and
interval end (in the window's violation unit). Parameters: the measured state ``x0``, the line current (held
over the horizon), the inputs applied last (for the ACD rate limit and the move penalty), the model's
derivative bias (offset-free correction), the cost weights (violation weights per window:
``MPCConfig.violation_factor``) and the windows the soft constraints use (the spec's windows narrowed by
``MPCConfig.backoff`` and ``backoff_high``). Each interval's dynamics is the model's own step (10 s)
chained ``interval_steps`` times (``casadi.Function.fold``).

The problem is rebuilt only when the model source reports a new revision (a swap in the twin), between
solves. Compiling a new problem to C is slow (the README gives the figures): with
``MPCConfig.compile_in_background`` the compiler runs on a thread (it touches no CasADi object) while the
problem in use keeps solving, and the new one takes over at the first solve after it is ready. Each solve is
warm-started from the previous solution shifted by one interval (primal, and with
``MPCConfig.warm_multipliers`` the multipliers too). A solve stopped by the iteration or wall-time cap is used
only when its last iterate is feasible and no worse than its first (``MPCConfig.accept_capped``); its status
then reads ``"<IPOPT status> (feasible iterate)"``.

Problems are shared within a process: NMPCs whose models have the same dynamics (the same CasADi function,
compared by its serialisation), input bounds and ``dt``, under the same :class:`~controller.config.MPCConfig`,
use one built problem (solver, bounds, compiled library), the first one built. A potline host running many cells
on copies of one model builds once (:data:`SHARED_PROBLEMS` most recent problems are kept).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from alutwin.cbuild import BuildError, build_shared_library, find_compiler
from controller.config import MPCConfig
from controller.models import ModelSource
from controller.problem import MANIPULATED, WINDOWS, CostWeights, controlled, full_input, mpc_power
from plant.signals import N_STATES, STATES

__all__ = ["CAPPED_STATUSES", "FEASIBLE_ITERATE", "NMPC", "SHARED_PROBLEMS", "Plan", "SUCCESS_STATUSES"]

log = logging.getLogger(__name__)

SUCCESS_STATUSES = ("Solve_Succeeded", "Solved_To_Acceptable_Level")
"""IPOPT return statuses taken as a usable solution."""

CAPPED_STATUSES = ("Maximum_Iterations_Exceeded", "Maximum_WallTime_Exceeded", "Maximum_CpuTime_Exceeded")
"""IPOPT return statuses of a solve stopped by a cap; its last iterate is used only when it is feasible and
no worse than the first (``MPCConfig.accept_capped``)."""

FEASIBLE_ITERATE = " (feasible iterate)"
"""Suffix of the status of a capped solve whose iterate was used."""

_NV = len(MANIPULATED)
_NW = len(WINDOWS)
_MIN_LEDGE = 600.0  # kg, a lower bound on the predicted ledge (the plant faults below 500 kg)
_RATE_SCALE = 0.0005  # m, scale of the ACD-move constraints
_X_CENTRE = np.array([(s.low + s.high) / 2 for s in STATES])  # (8,)
_X_HALF = np.array([(s.high - s.low) / 2 for s in STATES])  # (8,)

SHARED_PROBLEMS = 8
"""Built problems kept for other NMPCs of this process (least recently used dropped first)."""

_shared: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
_shared_lock = threading.Lock()


def _shared_problem(key: str) -> dict[str, Any] | None:
    with _shared_lock:
        problem = _shared.get(key)
        if problem is not None:
            _shared.move_to_end(key)
        return problem


def _share_problem(key: str, problem: dict[str, Any]) -> None:
    with _shared_lock:
        _shared[key] = problem
        _shared.move_to_end(key)
        while len(_shared) > SHARED_PROBLEMS:
            _shared.popitem(last=False)


def _shift(flat: np.ndarray, rows: int, n: int) -> np.ndarray:
    """A column-major ``(rows, n)`` block shifted one column left, the last column repeated."""
    m = flat.reshape(rows, n, order="F")
    return np.column_stack([m[:, 1:], m[:, -1:]]).ravel(order="F")


def _weight_vector(w: CostWeights) -> np.ndarray:
    """(16,) energy, the four target weights, the violation weights linear and quadratic of each window (both in
    WINDOWS order), three moves."""
    lin, quad = [w.violation_linear] * _NW, [w.violation_quadratic] * _NW
    return np.array([w.energy, *w.targets, *lin, *quad, *w.move], dtype=np.float64)


@dataclass(frozen=True)
class Plan:
    """The result of one solve.

    Attributes
    ----------
    v : (N, 3) manipulated inputs per interval (feed_al2o3 kg/s, feed_alf3 kg/s, acd m).
    x : (N + 1, 8) predicted states at the interval ends (``x[0]`` the measured state).
    success : whether IPOPT returned a usable, finite solution (converged, or a capped solve's feasible,
        non-worsening iterate: ``capped``).
    status : IPOPT's return status (or why the solve did not run); ``FEASIBLE_ITERATE`` appended when a capped
        solve's iterate is used.
    iterations : IPOPT iterations.
    solve_s : wall time of the solve, s.
    objective : the optimal objective value (NaN on failure).
    """

    v: np.ndarray
    x: np.ndarray
    success: bool
    status: str
    iterations: int
    solve_s: float
    objective: float
    capped: bool = False


class NMPC:
    """Nonlinear MPC of one cell on a :class:`~controller.models.ModelSource`.

    Parameters
    ----------
    model : ModelSource
        The prediction model; its :meth:`~controller.models.ModelSource.refresh` is called before each solve
        and the NLP rebuilt when its revision changes.
    config : MPCConfig
        Horizon, weights and solver settings.

    Notes
    -----
    Call :meth:`solve` with each new measurement (it warm-starts from the last solution) and
    :meth:`observe` once an interval has been applied (it updates the offset-free bias). With ``config.jit``
    the NLP's functions are generated to C and compiled once per machine (``alutwin.cbuild`` cache, keyed by the
    source, which holds the model's weights), so a second build of the same problem loads in a second.
    """

    # Set by _install from the problem _construct builds (one set per model revision).
    dt: float
    v_low: np.ndarray  # (3,) input bounds, spec spans and lows of the manipulated inputs
    v_high: np.ndarray
    v_span: np.ndarray
    v_ref: np.ndarray
    _interval: ca.Function
    _n_dyn: int
    _n_rate: int
    _n_win: int
    _solver: ca.Function | None  # None once closed
    _slices: tuple[slice, slice, slice]
    _lbx: np.ndarray
    _ubx: np.ndarray
    _lbg: np.ndarray
    _ubg: np.ndarray
    _weights: np.ndarray
    _windows: np.ndarray

    def __init__(self, model: ModelSource, config: MPCConfig | None = None) -> None:
        if not isinstance(model, ModelSource):
            raise ValueError(f"model must be a controller.models.ModelSource, got {type(model).__name__}")
        self.model = model
        self.config = config or MPCConfig()
        self.interval_s = self.config.interval_steps * model.dt
        self.bias = np.zeros(N_STATES)  # (8,) derivative bias per second
        self.builds: list[float] = []  # build times, s
        self._revision = -1
        self._guess: np.ndarray | None = None
        self._lam: tuple[np.ndarray, np.ndarray] | None = None
        self._pending: tuple[dict[str, Any], float, concurrent.futures.Future[Any], str] | None = None
        self._rebuilds: concurrent.futures.ThreadPoolExecutor | None = None
        self._build()

    # -- building ------------------------------------------------------------------------------------------

    def _source(self, solver: ca.Function) -> str | None:
        """C source of ``solver``'s functions (None when the MPC runs in CasADi's virtual machine)."""
        if not self.config.jit:
            return None
        if find_compiler() is None:
            warnings.warn("no C compiler found: the MPC runs in CasADi's virtual machine (slower)", stacklevel=4)
            return None
        gen = ca.CodeGenerator("nmpc.c", {"with_header": False})
        gen.add(solver.oracle())  # "nlp": the loader looks it up first
        for name in solver.get_function():
            gen.add(solver.get_function(name))
        return gen.dump()

    def _library(self, source: str) -> Path | BuildError:
        """The compiled library of ``source`` (``alutwin.cbuild`` cache), or why it could not be built. Touches no
        CasADi object, so it may run on the rebuild thread."""
        flags = (*self.config.jit_flags, "-fPIC", "-shared")
        try:
            lib, fresh = build_shared_library(source, "nmpc", flags=flags, key_extra=f"casadi {ca.__version__}")
        except BuildError as exc:
            return exc
        log.info("NMPC library %s (%s)", lib, "compiled now" if fresh else "from the cache")
        return lib

    def _load(self, problem: dict[str, Any], lib: Path | BuildError) -> dict[str, Any]:
        """``problem`` with its solver loaded from ``lib`` (or left in CasADi's virtual machine, with a warning,
        when the build failed)."""
        if isinstance(lib, BuildError):
            warnings.warn(f"compiling the MPC failed, it runs in CasADi's virtual machine: {lib}", stacklevel=4)
            return problem
        return {**problem, "_solver": ca.nlpsol("nmpc", "ipopt", str(lib), problem["_opts"])}

    def _problem_key(self) -> str:
        """What the problem on the model's current revision is built from: the model's dynamics (its
        serialisation), ``dt`` and input bounds, and the configuration (a hex digest)."""
        model = self.model
        digest = hashlib.sha256(model.dynamics().serialize().encode())
        digest.update(repr((model.dt, sorted(model.input_bounds().items()), self.config)).encode())
        return digest.hexdigest()

    def _from_shared(self, key: str, t0: float) -> bool:
        """Use the problem another NMPC of this process built on the same key, if there is one."""
        problem = _shared_problem(key)
        if problem is None:
            return False
        self._install({**problem, "_revision": self.model.revision}, time.perf_counter() - t0)
        return True

    def _build(self) -> None:
        """Build the problem on the model's current revision and use it (compiling it here if needed)."""
        t0 = time.perf_counter()
        key = self._problem_key()
        if self._from_shared(key, t0):
            return
        problem, source = self._construct()
        if source is not None:
            problem = self._load(problem, self._library(source))
        _share_problem(key, problem)
        self._install(problem, time.perf_counter() - t0)

    def _install(self, problem: dict[str, Any], build_s: float) -> None:
        for key, value in problem.items():
            if key != "_opts":
                setattr(self, key, value)
        self._guess = None
        self._lam = None  # shifted multipliers (bounds, constraints)
        self.builds.append(build_s)
        log.info("NMPC on %s revision %d in use (built in %.2f s)", self.model.name, self._revision, build_s)

    def _construct(self) -> tuple[dict[str, Any], str | None]:
        """The problem on the model's current revision: the attributes :meth:`solve` uses (the solver in
        CasADi's virtual machine) and the C source to compile (None without JIT)."""
        cfg, model = self.config, self.model
        n, steps = cfg.horizon, cfg.interval_steps
        interval_s = steps * model.dt
        f = model.dynamics()

        bounds = model.input_bounds()
        v_low = np.array([bounds[m.name][0] for m in MANIPULATED])  # (3,)
        v_high = np.array([bounds[m.name][1] for m in MANIPULATED])  # (3,)
        v_span = np.array([m.span for m in MANIPULATED])  # (3,) spec spans, for scaling and move weights
        v_ref = np.array([m.low for m in MANIPULATED])  # (3,)

        xs, us, ds = ca.SX.sym("x", N_STATES), ca.SX.sym("u", 5), ca.SX.sym("d", N_STATES)
        g = ca.Function("step_biased", [xs, us, ds], [f(xs, us) + model.dt * ds])
        interval = g.fold(steps)  # (x, u (5, steps), d (8, steps)) -> x after the interval

        z = ca.MX.sym("z", N_STATES, n)  # scaled states at the interval ends 1..N
        w = ca.MX.sym("w", _NV, n)  # scaled inputs of intervals 0..N-1
        s = ca.MX.sym("s", _NW, n)  # window slacks at the interval ends 1..N
        p_x0 = ca.MX.sym("x0", N_STATES)
        p_cur = ca.MX.sym("current")
        p_prev = ca.MX.sym("v_prev", _NV)
        p_d = ca.MX.sym("bias", N_STATES)
        p_w = ca.MX.sym("weights", len(_weight_vector(cfg.weights)))  # parameters: one compiled library per model
        p_lo, p_hi = ca.MX.sym("win_low", _NW), ca.MX.sym("win_high", _NW)  # the windows the soft constraints use
        wt_energy, wt_targets, wt_move = p_w[0], p_w[1:5], p_w[13:16]
        wt_lin, wt_quad = p_w[5:9], p_w[9:13]  # per window

        centre, half = ca.DM(_X_CENTRE), ca.DM(_X_HALF)
        span, ref = ca.DM(v_span), ca.DM(v_ref)
        h = interval_s / 3600.0
        d_rep = ca.repmat(p_d, 1, steps)
        cost = 0
        g_dyn, g_rate, g_win = [], [], []
        x_prev, v_prev = p_x0, p_prev
        for k in range(n):
            v_k = ref + span * w[:, k]
            u_k = full_input(v_k, p_cur)
            x_next = centre + half * z[:, k]
            x_pred = interval(x_prev, ca.repmat(u_k, 1, steps), d_rep)
            g_dyn.append((x_pred - x_next) / half)
            g_rate.append((v_k[2] - v_prev[2]) / _RATE_SCALE)
            values, _ = controlled(x_next, u_k)
            power_start, power_end = mpc_power(x_prev, u_k), mpc_power(x_next, u_k)
            stage = wt_energy * 0.5 * (power_start + power_end) / 1000.0
            for i, (value, window) in enumerate(zip(values, WINDOWS, strict=True)):
                if window.target is not None:
                    stage += wt_targets[i] * (value - window.target) ** 2
                g_win.append((value - p_lo[i]) / window.scale + s[i, k])
                g_win.append((p_hi[i] - value) / window.scale + s[i, k])
                stage += wt_lin[i] * s[i, k] + wt_quad[i] * s[i, k] ** 2
            cost += h * stage
            for j in range(_NV):
                cost += wt_move[j] * ((v_k[j] - v_prev[j]) / v_span[j]) ** 2
            x_prev, v_prev = x_next, v_k

        dec = ca.veccat(z, w, s)
        par = ca.vertcat(p_x0, p_cur, p_prev, p_d, p_w, p_lo, p_hi)
        cons = ca.vertcat(*g_dyn, *g_rate, *g_win)
        n_dyn, n_win = N_STATES * n, 2 * _NW * n
        opts: dict[str, Any] = {
            "print_time": False,
            "ipopt": {
                "print_level": 0,
                "sb": "yes",
                "max_iter": cfg.max_iter,
                "max_wall_time": cfg.max_wall_s,
                "tol": cfg.tol,
                "acceptable_tol": 1e-4,
                "acceptable_iter": 5,
                "hessian_approximation": cfg.hessian,
            },
        }
        if cfg.warm_multipliers:
            opts["ipopt"].update(
                {
                    "warm_start_init_point": "yes",
                    "mu_init": 1e-3,
                    "warm_start_bound_push": 1e-6,
                    "warm_start_bound_frac": 1e-6,
                    "warm_start_slack_bound_push": 1e-6,
                    "warm_start_slack_bound_frac": 1e-6,
                    "warm_start_mult_bound_push": 1e-6,
                }
            )
        solver = ca.nlpsol("nmpc", "ipopt", {"x": dec, "p": par, "f": cost, "g": cons}, opts)
        nz, nw = N_STATES * n, _NV * n
        w_lo = np.clip((v_low - v_ref) / v_span, 0.0, 1.0)  # (3,)
        w_hi = np.clip((v_high - v_ref) / v_span, 0.0, 1.0)
        z_lo = np.full(N_STATES, -np.inf)  # (8,) keep the predicted ledge inside the equations' valid domain
        z_lo[0] = (_MIN_LEDGE - _X_CENTRE[0]) / _X_HALF[0]
        rate = cfg.acd_rate / _RATE_SCALE
        weights = _weight_vector(cfg.weights)
        weights[5:13] *= np.tile(cfg.violation_factors, 2)  # the MPC's own penalties on leaving its windows
        problem = {
            "_revision": model.revision,
            "dt": model.dt,
            "interval_s": interval_s,
            "v_low": v_low,
            "v_high": v_high,
            "v_span": v_span,
            "v_ref": v_ref,
            "_interval": interval,
            "_n_dyn": n_dyn,
            "_n_rate": n,
            "_n_win": n_win,
            "_solver": solver,
            "_opts": opts,
            "_slices": (slice(0, nz), slice(nz, nz + nw), slice(nz + nw, nz + nw + _NW * n)),
            "_lbx": np.concatenate([np.tile(z_lo, n), np.tile(w_lo, n), np.zeros(_NW * n)]),
            "_ubx": np.concatenate([np.full(nz, np.inf), np.tile(w_hi, n), np.full(_NW * n, np.inf)]),
            "_lbg": np.concatenate([np.zeros(n_dyn), np.full(n, -rate), np.zeros(n_win)]),
            "_ubg": np.concatenate([np.zeros(n_dyn), np.full(n, rate), np.full(n_win, np.inf)]),
            "_weights": weights,
            "_windows": np.concatenate(
                [
                    np.array([w.low for w in WINDOWS]) + np.asarray(cfg.backoff),
                    np.array([w.high for w in WINDOWS]) - np.asarray(cfg.backoffs_high),
                ]
            ),
        }
        log.info(
            "constructed the NMPC on %s revision %d (%d intervals x %d steps)", model.name, model.revision, n, steps
        )
        return problem, self._source(solver)

    def _follow_model(self) -> None:
        """Before a solve: apply the model source's pending change, put a finished background build in use, and
        start building the problem for a new revision (on the rebuild thread when it needs compiling and
        ``config.compile_in_background``; the current problem keeps solving meanwhile)."""
        self.model.refresh()
        pending = self._pending
        if pending is not None and pending[2].done():
            self._pending = None
            problem, t0, future, key = pending
            problem = self._load(problem, future.result())
            _share_problem(key, problem)
            self._install(problem, time.perf_counter() - t0)
        target = self.model.revision
        if target == self._revision or self._pending is not None:
            return  # current, or a build is under way (a newer revision is taken up after it)
        t0 = time.perf_counter()
        key = self._problem_key()
        if self._from_shared(key, t0):
            return
        problem, source = self._construct()
        if source is None:
            _share_problem(key, problem)
            self._install(problem, time.perf_counter() - t0)
        elif not self.config.compile_in_background:
            problem = self._load(problem, self._library(source))
            _share_problem(key, problem)
            self._install(problem, time.perf_counter() - t0)
        else:
            if self._rebuilds is None:
                self._rebuilds = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nmpc-rebuild")
            self._pending = (problem, t0, self._rebuilds.submit(self._library, source), key)
            log.info("compiling the NMPC for %s revision %d in the background", self.model.name, target)

    def describe_problem(self) -> dict[str, Any]:
        """For reports: the build times (s), and the model revision of the problem in use next to the model
        source's (they differ while a new problem compiles in the background)."""
        return {
            "build_s": list(self.builds),
            "problem_revision": self._revision,
            "model_revision": self.model.revision,
            "rebuilding": self.rebuilding,
        }

    @property
    def rebuilding(self) -> bool:
        """True while a problem for a newer model revision compiles in the background."""
        return self._pending is not None

    @property
    def problem_revision(self) -> int:
        """The model revision the problem in use was built on (behind ``model.revision`` while a new one
        compiles in the background)."""
        return self._revision

    @property
    def n_variables(self) -> int:
        return int(self._lbx.size)

    # -- prediction helpers ----------------------------------------------------------------------------------

    def predict_interval(
        self, x: np.ndarray, v: np.ndarray, current: float, bias: np.ndarray | None = None
    ) -> np.ndarray:
        """The model's state ``(8,)`` after one interval from ``x`` ``(8,)`` under ``v`` ``(3,)`` held."""
        steps = self.config.interval_steps
        u = np.repeat(full_input(np.asarray(v, dtype=np.float64), current)[:, None], steps, axis=1)  # (5, steps)
        d = np.repeat((self.bias if bias is None else bias)[:, None], steps, axis=1)  # (8, steps)
        return np.asarray(self._interval(x, u, d)).ravel()

    def observe(self, x_before: np.ndarray, v_applied: np.ndarray, current: float, x_after: np.ndarray) -> None:
        """Update the derivative bias from one interval: measured ``x_after`` versus the model's prediction."""
        gain = self.config.bias_gain
        if gain == 0:
            return
        pred = self.predict_interval(x_before, v_applied, current)
        innovation = (np.asarray(x_after) - pred) / self.interval_s  # (8,) per second
        if np.all(np.isfinite(innovation)):
            self.bias = self.bias + gain * innovation

    def reset(self) -> None:
        """Forget the warm start and the bias (a new scenario)."""
        self.bias = np.zeros(N_STATES)
        self._guess = None
        self._lam = None

    # -- solving ---------------------------------------------------------------------------------------------

    def _initial_guess(self, x0: np.ndarray, v_prev: np.ndarray, current: float) -> np.ndarray:
        n = self.config.horizon
        v = np.clip(v_prev, self.v_low, self.v_high)
        zs, x = [], x0
        for _ in range(n):
            x = self.predict_interval(x, v, current)
            if not np.all(np.isfinite(x)):
                x = x0
            zs.append((x - _X_CENTRE) / _X_HALF)
        w = (v - self.v_ref) / self.v_span
        xs = _X_CENTRE + _X_HALF * np.column_stack(zs).T  # (N, 8)
        with np.errstate(all="ignore"):
            values, _ = controlled(xs, full_input(np.broadcast_to(v, (n, _NV)), current))
        lo, hi = self._windows[:_NW], self._windows[_NW:]
        slack = np.column_stack(  # (N, 4): the slacks that make the guess feasible
            [np.maximum(np.maximum(lo[i] - val, val - hi[i]), 0.0) / WINDOWS[i].scale for i, val in enumerate(values)]
        )
        slack = np.where(np.isfinite(slack), slack, 0.0)
        return np.concatenate([np.column_stack(zs).ravel(order="F"), np.tile(w, n), slack.ravel()])

    def _shifted(self, sol: np.ndarray) -> np.ndarray:
        n = self.config.horizon
        out = []
        for sl, rows in zip(self._slices, (N_STATES, _NV, _NW), strict=True):
            out.append(_shift(sol[sl], rows, n))
        return np.concatenate(out)

    def _shifted_lam_g(self, lam: np.ndarray) -> np.ndarray:
        """Constraint multipliers shifted by one interval (dynamics, ACD rate, windows blocks)."""
        n, a, b = self.config.horizon, self._n_dyn, self._n_dyn + self._n_rate
        return np.concatenate([_shift(lam[:a], N_STATES, n), _shift(lam[a:b], 1, n), _shift(lam[b:], 2 * _NW, n)])

    def _violation(self, sol: np.ndarray, g: np.ndarray) -> float:
        """Largest violation of the bounds and constraints at ``sol`` (the NLP's scaled units)."""
        with np.errstate(invalid="ignore"):
            worst = max(
                float(np.max(np.maximum(self._lbx - sol, 0.0), initial=0.0)),
                float(np.max(np.maximum(sol - self._ubx, 0.0), initial=0.0)),
                float(np.max(np.maximum(self._lbg - g, 0.0), initial=0.0)),
                float(np.max(np.maximum(g - self._ubg, 0.0), initial=0.0)),
            )
        return worst if np.all(np.isfinite(g)) else float("inf")

    def solve(self, x0: np.ndarray, current: float, v_prev: np.ndarray) -> Plan:
        """Solve the NLP from the measured state.

        Parameters
        ----------
        x0 : (8,) measured state.
        current : A, the line current, held over the horizon.
        v_prev : (3,) the manipulated inputs applied over the last interval.

        Returns
        -------
        Plan
        """
        self._follow_model()
        x0 = np.asarray(x0, dtype=np.float64)
        v_prev = np.asarray(v_prev, dtype=np.float64)
        n = self.config.horizon
        if x0.shape != (N_STATES,) or not np.all(np.isfinite(x0)):
            return self._failed(x0, "non-finite or misshapen measurement", 0.0)
        if not (np.isfinite(current) and v_prev.shape == (_NV,) and np.all(np.isfinite(v_prev))):
            return self._failed(x0, "non-finite current or previous inputs", 0.0)
        cfg = self.config
        guess = self._initial_guess(x0, v_prev, current) if self._guess is None else self._guess
        p = np.concatenate([x0, [current], v_prev, self.bias, self._weights, self._windows])
        args = {"x0": guess, "p": p, "lbx": self._lbx, "ubx": self._ubx, "lbg": self._lbg, "ubg": self._ubg}
        if cfg.warm_multipliers and self._lam is not None and self._guess is not None:
            args["lam_x0"], args["lam_g0"] = self._lam
        solver = self._solver
        if solver is None:
            raise RuntimeError("NMPC.solve called after close()")
        t0 = time.perf_counter()
        try:
            res = solver(**args)
            stats = solver.stats()
            status = str(stats.get("return_status", "unknown"))
            iters = int(stats.get("iter_count", 0))
        except RuntimeError as exc:  # an evaluation error inside IPOPT
            return self._failed(x0, f"solver error: {exc}".splitlines()[0], time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        sol = np.asarray(res["x"]).ravel()
        objective = float(res["f"])
        z = sol[self._slices[0]].reshape(N_STATES, n, order="F").T  # (N, 8)
        w = sol[self._slices[1]].reshape(_NV, n, order="F").T  # (N, 3)
        v = self.v_ref + self.v_span * w
        x = np.vstack([x0, _X_CENTRE + _X_HALF * z])  # (N + 1, 8)
        finite = bool(np.all(np.isfinite(sol)) and np.isfinite(objective))
        ok = status in SUCCESS_STATUSES and finite
        capped = False
        if not ok and finite and cfg.accept_capped and status in CAPPED_STATUSES:
            capped = self._usable_iterate(sol, np.asarray(res["g"]).ravel(), stats)
            if capped:
                ok, status = True, status + FEASIBLE_ITERATE
        if ok or (finite and status in CAPPED_STATUSES and cfg.continue_capped):
            # a capped iterate not used here is still IPOPT's progress: the next solve continues from it
            self._guess = self._shifted(sol)
            lam_x, lam_g = np.asarray(res["lam_x"]).ravel(), np.asarray(res["lam_g"]).ravel()
            self._lam = (self._shifted(lam_x), self._shifted_lam_g(lam_g))
        else:
            self._guess = None
            self._lam = None
        return Plan(v, x, bool(ok), status, iters, elapsed, objective if ok else float("nan"), capped)

    def _usable_iterate(self, sol: np.ndarray, g: np.ndarray, stats: dict[str, Any]) -> bool:
        """Whether a capped solve's last iterate may be applied: it satisfies every bound and constraint (within
        ``feasibility_tol``) and its objective is not above the first iterate's, if that one was feasible."""
        tol = self.config.feasibility_tol
        if not self._violation(sol, g) <= tol:
            return False
        hist = stats.get("iterations") or {}
        obj, inf_pr = list(hist.get("obj", [])), list(hist.get("inf_pr", []))
        if len(obj) >= 2 and len(inf_pr) >= 2 and inf_pr[0] <= tol:
            return bool(obj[-1] <= obj[0])
        return True

    def _failed(self, x0: np.ndarray, why: str, elapsed: float) -> Plan:
        n = self.config.horizon
        self._guess = None
        self._lam = None
        return Plan(np.full((n, _NV), np.nan), np.full((n + 1, N_STATES), np.nan), False, why, 0, elapsed, np.nan)

    def close(self) -> None:
        """Release the solver. A compile already running on the rebuild thread still finishes (into the cache;
        the interpreter waits for it at exit), queued ones are cancelled."""
        self._solver = None
        self._pending = None
        if self._rebuilds is not None:
            self._rebuilds.shutdown(wait=False, cancel_futures=True)
            self._rebuilds = None

    def __enter__(self) -> NMPC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
