"""A compiled simulation engine: the plant's own equations, generated to C by CasADi and run in a C loop.

One trajectory step (the cell's feed controllers plus the excitation, one RK4 step, the domain check, the fault
latch) is built once as a CasADi ``SX`` function by calling :func:`plant.physics.feed_controllers` and
:func:`plant.physics.rk4_step` on symbols, so no equation is written twice. CasADi generates C for it; a short
hand-written C driver (``engine_driver.c``, package data beside this module) loops over the T steps of each
trajectory and writes states, applied inputs and the fault record straight into numpy arrays. The library is
compiled with the system C compiler (``$CC``, ``cc`` or ``gcc``) by :func:`alutwin.cbuild.build_shared_library`
(no fast-math, no FMA contraction), cached per user, and called through :mod:`ctypes`; trajectories are split
over threads (``ctypes`` releases the GIL during the call).

The results are those of the numpy engine (:func:`plant.simulator._simulate_numpy`) to rounding: CasADi
simplifies constants as it builds the graph (``1.12 * (100 * c)`` becomes ``112 * c``), and the C library's
``exp`` and ``pow`` may differ from numpy's SIMD ones in the last bit. The cell's feedback (the feed
controllers) amplifies such differences over long trajectories, as it does any rounding; the tests state the
tolerances measured.

Why not ``casadi.external`` with ``mapaccum``/``map``? It works, but converting the results between CasADi
matrices and numpy arrays costs about as much as the simulation itself, and ``mapaccum`` has to be rebuilt for
every horizon T; the C driver needs neither (see ``bench/plant_sim.py``).

The compiled library is kept in the compile cache (:func:`alutwin.cbuild.cache_dir`: ``$ALUTWIN_CACHE``, else
``$XDG_CACHE_HOME/alutwin``, ``~/.cache/alutwin`` or a private temporary folder), under a name that hashes the generated source, the compiler, its version, the flags and
the CasADi version; it is written to a temporary file and renamed into place, so concurrent processes are safe.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import casadi as ca
import numpy as np

from alutwin.cbuild import BuildError, LibraryCache, build_shared_library, package_source, usable_cpus
from plant.domain import Fault
from plant.excitation import Exogenous
from plant.params import CellParams, DomainLimits
from plant.physics import feed_controllers, rk4_step
from plant.signals import N_INPUTS, N_STATES, U, X

__all__ = [
    "COMPILE_FLAGS",
    "CompiledEngineError",
    "CompilerUnavailableWarning",
    "step_function",
    "generate_source",
    "build_library",
    "compiled_available",
    "compiled_library",
    "simulate_compiled",
    "make_auto_engine",
]

COMPILE_FLAGS: tuple[str, ...] = ()
"""Flags added to :data:`alutwin.cbuild.DEFAULT_FLAGS` for the engine: none (``-O2``, no FMA contraction)."""

N_EXO = 4  # current, acd, alumina_extra, alf3_extra
_STEP_NAME = "alutwin_step"
_DRIVER_NAME = "alutwin_simulate"
_DBL_MAX = float(np.finfo(np.float64).max)
_MIN_STEPS_PER_THREAD = 20_000  # trajectory-steps below which another thread costs more than it saves

Engine = Callable[[np.ndarray, Exogenous, float, CellParams, DomainLimits], tuple[np.ndarray, ...]]


class CompiledEngineError(RuntimeError):
    """The compiled engine cannot be used here (no C compiler, a failed build, or a failed self-check)."""


class CompilerUnavailableWarning(UserWarning):
    """The ``"auto"`` engine fell back to the numpy engine because the compiled one cannot be built."""


def _domain_code(x: ca.SX, limits: DomainLimits) -> ca.SX:
    """Fault code of state ``x`` (8, 1) as :func:`plant.domain.check_domain` assigns it (same priority)."""
    bath = x[X.M_AL2O3] + x[X.M_ALF3] + x[X.M_CRYOLITE]
    pa = 100.0 * x[X.M_AL2O3] / bath
    pf = 100.0 * x[X.M_ALF3] / bath
    finite = ca.SX(1.0)
    for i in range(N_STATES):
        finite = ca.logic_and(finite, ca.fabs(x[i]) <= _DBL_MAX)  # false for inf and NaN
    code = ca.if_else(
        ca.logic_or(pf < limits.alf3_pct[0], pf > limits.alf3_pct[1]), float(Fault.ALF3_OUT_OF_RANGE), 0.0
    )
    bad_a = ca.logic_or(pa < limits.alumina_pct[0], pa > limits.alumina_pct[1])
    code = ca.if_else(bad_a, float(Fault.ALUMINA_OUT_OF_RANGE), code)
    code = ca.if_else(x[X.M_LEDGE] < limits.min_ledge_mass, float(Fault.LEDGE_MELTED), code)
    return ca.if_else(finite, code, float(Fault.NON_FINITE))


def step_function(dt: float, params: CellParams, limits: DomainLimits) -> ca.Function:
    """One trajectory step of the numpy engine as a CasADi ``SX`` function.

    Inputs ``(x (8), fault (1), u_prev (5), exo (4))``: the state (the last valid one after a fault), the
    fault code so far (0: none), the input applied at the previous step, and this step's current, ACD, extra
    alumina and extra AlF3. Outputs ``(x_next (8), fault_next (1), u (5))``. While no fault is latched, ``u`` is
    composed as :func:`plant.simulator.compose_inputs` does, ``x_next`` is one RK4 step, or ``x`` again where
    that step leaves the valid domain, and ``fault_next`` is the domain code of the step's result. Once a
    fault is latched everything is held: ``x_next = x``, ``fault_next = fault``, ``u = u_prev``.
    ``if_else`` masks the untaken branch, so a NaN from a failed step never reaches an output.
    """
    x = ca.SX.sym("x", N_STATES)
    fault = ca.SX.sym("fault")
    u_prev = ca.SX.sym("u_prev", N_INPUTS)
    exo = ca.SX.sym("exo", N_EXO)
    feed_a, feed_f, tap = feed_controllers(x, dt)
    parts = [None] * N_INPUTS
    parts[U.FEED_AL2O3] = feed_a + exo[2]
    parts[U.CURRENT] = exo[0]
    parts[U.FEED_ALF3] = feed_f + exo[3]
    parts[U.TAPPING] = tap
    parts[U.ACD] = exo[1]
    u = ca.vertcat(*parts)
    x_rk4 = rk4_step(x, u, dt, params)
    code = _domain_code(x_rk4, limits)
    alive = fault == 0
    x_next = ca.if_else(ca.logic_and(alive, code == 0), x_rk4, x)
    fault_next = ca.if_else(alive, code, fault)
    u_out = ca.if_else(alive, u, u_prev)
    return ca.Function(
        _STEP_NAME,
        [x, fault, u_prev, exo],
        [x_next, fault_next, u_out],
        ["x", "fault", "u_prev", "exo"],
        ["x_next", "fault_next", "u"],
    )


def generate_source(dt: float, params: CellParams, limits: DomainLimits) -> str:
    """C source of the engine: the step function generated by CasADi, then the driver loop ``engine_driver.c``.

    CasADi's C leaves some parameters of its API unused; it is wrapped in pragmas that silence that warning
    (only there), so the whole source compiles warning-free with ``-Wall -Wextra``.
    """
    f = step_function(dt, params, limits)
    cg = ca.CodeGenerator("alutwin_plant.c", {"with_header": False})
    cg.add(f)
    sizes = {
        "ALU_STEP": _STEP_NAME,
        "ALU_SZ_ARG": f.sz_arg(),
        "ALU_SZ_RES": f.sz_res(),
        "ALU_SZ_IW": f.sz_iw(),
        "ALU_SZ_W": f.sz_w(),
        "ALU_NX": N_STATES,
        "ALU_NU": N_INPUTS,
        "ALU_NEXO": N_EXO,
    }
    return "".join(
        [
            '#pragma GCC diagnostic push\n#pragma GCC diagnostic ignored "-Wunused-parameter"\n',
            cg.dump(),
            "#pragma GCC diagnostic pop\n\n",
            "".join(f"#define {k} {v}\n" for k, v in sizes.items()),
            package_source(__package__, "engine_driver.c"),
        ]
    )


def build_library(
    dt: float, params: CellParams, limits: DomainLimits, *, directory: Path | None = None
) -> tuple[Path, bool]:
    """Compile the engine for ``(dt, params, limits)`` unless the cache already holds it.

    Returns ``(path of the shared library, whether it was compiled now)``. Raises
    :class:`CompiledEngineError` without a C compiler or when compilation fails.
    """
    source = generate_source(dt, params, limits)
    try:
        return build_shared_library(
            source, "alutwin_plant", COMPILE_FLAGS, key_extra=ca.__version__, directory=directory
        )
    except BuildError as err:
        raise CompiledEngineError(str(err)) from err


@dataclass(frozen=True)
class _Library:
    """A loaded engine library and how long building it took."""

    path: Path
    driver: Callable[..., int]
    handle: ctypes.CDLL
    compiled_now: bool

    def run(
        self,
        x0: np.ndarray,
        exo: tuple[np.ndarray, ...],
        xs: np.ndarray,
        us: np.ndarray,
        fault_step: np.ndarray,
        fault_code: np.ndarray,
        rows: slice,
    ) -> int:
        """Simulate trajectories ``rows`` (contiguous arrays; results written in place)."""
        b0, b1 = rows.start, rows.stop
        t = us.shape[1]
        return self.driver(
            b1 - b0,
            t,
            x0[b0:b1].ctypes.data,
            *(e[b0:b1].ctypes.data for e in exo),
            xs[b0:b1].ctypes.data,
            us[b0:b1].ctypes.data,
            fault_step[b0:b1].ctypes.data,
            fault_code[b0:b1].ctypes.data,
        )


def _load(path: Path, compiled_now: bool) -> _Library:
    try:
        handle = ctypes.CDLL(str(path))
        driver = getattr(handle, _DRIVER_NAME)
    except (OSError, AttributeError) as err:
        raise CompiledEngineError(f"cannot load the compiled engine {path}: {err}") from err
    driver.restype = ctypes.c_int
    driver.argtypes = [ctypes.c_longlong, ctypes.c_longlong] + [ctypes.c_void_p] * 9
    return _Library(path, driver, handle, compiled_now)


def _self_check(lib: _Library, dt: float, params: CellParams) -> None:
    """One step of one cell against the numpy equations: catches a broken compiler or library."""
    x0 = np.array([[3000.0, 488.372, 1790.698, 14000.0, 9900.0, 975.0, 820.0, 580.0]])  # (1, 8)
    exo = tuple(np.array([[v]]) for v in (140_000.0, 0.05, 0.0, 0.0))  # 4 x (1, 1)
    xs, us = np.zeros((1, 2, N_STATES)), np.zeros((1, 1, N_INPUTS))
    fs, fc = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8)
    if lib.run(x0, exo, xs, us, fs, fc, slice(0, 1)) != 0:
        raise CompiledEngineError(f"the compiled engine {lib.path} reported an error in its self-check")
    fa, ff, tap = feed_controllers(x0, dt)
    u = np.stack([fa, exo[0][:, 0], ff, tap, exo[1][:, 0]], axis=-1)  # (1, 5)
    expected = rk4_step(x0, u, dt, params) if fc[0] == 0 else x0  # under tight limits the step may fault
    # one step: CasADi's simplified constants and the C library's exp and pow differ in the last bits only
    if not (np.allclose(us[:, 0], u, rtol=1e-12, atol=0) and np.allclose(xs[:, 1], expected, rtol=1e-12, atol=0)):
        raise CompiledEngineError(f"the compiled engine {lib.path} disagrees with the numpy equations")


def _checked(dt: float, params: CellParams, limits: DomainLimits) -> _Library:
    path, compiled_now = build_library(dt, params, limits)
    lib = _load(path, compiled_now)
    _self_check(lib, dt, params)
    return lib


# once per process, not per compiler: simulate_compiled asks on every call, and a PATH lookup is not free
_LIBRARIES: LibraryCache[_Library, CompiledEngineError] = LibraryCache(
    _checked, CompiledEngineError, maxsize=16, per_compiler=False
)
"""The engine for each ``(dt, params, limits)``, loaded once per process (or why it cannot be had)."""


def compiled_available(dt: float = 10.0, params: CellParams | None = None, limits: DomainLimits | None = None) -> bool:
    """Whether the compiled engine can be built and loaded here (builds it if needed; the answer is cached)."""
    params = params if params is not None else CellParams()
    limits = limits if limits is not None else DomainLimits()
    return _LIBRARIES.available(float(dt), params, limits)


def compiled_library(dt: float = 10.0, params: CellParams | None = None, limits: DomainLimits | None = None) -> Path:
    """Path of the shared library this process uses for ``(dt, params, limits)`` (built if needed).

    Besides the driver it holds the step function with CasADi's C API, so ``casadi.external("alutwin_step",
    path)`` loads it as a CasADi ``Function``. Raises :class:`CompiledEngineError` where it cannot be built.
    """
    params = params if params is not None else CellParams()
    limits = limits if limits is not None else DomainLimits()
    return _LIBRARIES.get(float(dt), params, limits).path


def simulate_compiled(
    x0: np.ndarray,
    exo: Exogenous,
    dt: float,
    params: CellParams,
    limits: DomainLimits,
    *,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The compiled engine: same signature and results as the numpy engine of :mod:`plant.simulator`.

    Parameters
    ----------
    x0 : (B, 8) initial states (valid; :func:`plant.simulator.simulate` checks them).
    exo : Exogenous
        B trajectories of T steps.
    dt, params, limits
        Sample time (s), constants of the model and valid domain; each combination is compiled once.
    n_threads : int, optional
        Threads to split the trajectories over (at most B). Default: the CPUs this process may use, fewer
        for small batches. The results do not depend on it.

    Returns
    -------
    x : (B, T + 1, 8), u : (B, T, 5), fault_step : (B,) int64, fault_code : (B,) int8.

    Raises
    ------
    CompiledEngineError
        Where no C compiler is found or the build fails.
    """
    x0 = np.ascontiguousarray(x0, dtype=np.float64)
    if not isinstance(exo, Exogenous):
        raise TypeError(f"exo must be an Exogenous, got {type(exo).__name__}")
    b, t = exo.shape
    if x0.shape != (b, N_STATES):
        raise ValueError(f"x0 must have shape ({b}, {N_STATES}) to match the excitation, got {x0.shape}")
    if n_threads is not None and (not isinstance(n_threads, (int, np.integer)) or n_threads < 1):
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    lib = _LIBRARIES.get(float(dt), params, limits)
    exo_arrays = tuple(
        np.ascontiguousarray(a, dtype=np.float64) for a in (exo.current, exo.acd, exo.alumina_extra, exo.alf3_extra)
    )  # 4 x (B, T)
    xs = np.empty((b, t + 1, N_STATES))  # (B, T + 1, 8)
    us = np.empty((b, t, N_INPUTS))  # (B, T, 5)
    fault_step = np.empty(b, dtype=np.int64)  # (B,)
    fault_code = np.empty(b, dtype=np.int8)  # (B,)
    wanted = n_threads if n_threads is not None else min(usable_cpus(), (b * t) // _MIN_STEPS_PER_THREAD)
    n = max(1, min(wanted, b))
    bounds = [round(i * b / n) for i in range(n + 1)]
    parts = [slice(bounds[i], bounds[i + 1]) for i in range(n)]
    codes = [0] * n

    def work(i: int) -> None:
        codes[i] = lib.run(x0, exo_arrays, xs, us, fault_step, fault_code, parts[i])

    if n == 1:
        work(0)
    else:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if any(codes):
        raise CompiledEngineError(f"the compiled engine {lib.path} reported an error")
    return xs, us, fault_step, fault_code


def make_auto_engine(fallback: Engine) -> Engine:
    """An engine that runs :func:`simulate_compiled` where it can be built, else ``fallback``.

    The first time the compiled engine cannot be had for a given ``(dt, params, limits)`` in this process, a
    :class:`CompilerUnavailableWarning` says why; later calls fall back silently.
    """
    warned: set[tuple[float, CellParams, DomainLimits]] = set()

    def auto(
        x0: np.ndarray, exo: Exogenous, dt: float, params: CellParams, limits: DomainLimits
    ) -> tuple[np.ndarray, ...]:
        lib = _LIBRARIES.get_or_error(float(dt), params, limits)
        if isinstance(lib, CompiledEngineError):
            key = (float(dt), params, limits)
            if key not in warned:
                warned.add(key)
                warnings.warn(
                    f"compiled plant engine unavailable, using the numpy engine: {lib}",
                    CompilerUnavailableWarning,
                    stacklevel=3,
                )
            return fallback(x0, exo, dt, params, limits)
        return simulate_compiled(x0, exo, dt, params, limits)

    return auto
