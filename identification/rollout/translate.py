"""The rollout kernel's C source: the hand-written ``prelude.c`` and ``kernel.c`` (package data), with the physics
prior and the algebraic outputs translated from CasADi ``SX`` graphs into C on SIMD vectors in between.

The translation follows the ``SX`` graph instruction by instruction (the graph CasADi's own code generator
writes as scalar C): arithmetic on whole vectors, ``exp``, ``pow`` and the other library functions lane by lane
with the C library, so each lane computes what scalar code computes.
"""

from __future__ import annotations

import casadi as ca
import numpy as np

from alutwin.cbuild import package_source
from identification.surrogate import PRIORS
from plant.engine import CompiledEngineError
from plant.physics import OUTPUT_FUNCTIONS, algebraic, rhs
from plant.signals import N_INPUTS, N_STATES

__all__ = ["OUTPUT_ORDER", "kernel_source", "prelude_source", "vector_source"]

OUTPUT_ORDER = tuple(OUTPUT_FUNCTIONS)
"""The algebraic outputs of the ensemble mean that :meth:`RolloutEngine.simulate_summary` returns, in order."""

_VEC_BINARY = {"OP_ADD": "+", "OP_SUB": "-", "OP_MUL": "*", "OP_DIV": "/"}
_VEC_COMPARE = {"OP_LT": "<", "OP_LE": "<=", "OP_EQ": "==", "OP_NE": "!="}
_LANE_UNARY = {
    "OP_EXP": "exp", "OP_LOG": "log", "OP_SQRT": "sqrt", "OP_FABS": "fabs", "OP_SIN": "sin", "OP_COS": "cos",
    "OP_TAN": "tan", "OP_TANH": "tanh", "OP_ATAN": "atan", "OP_FLOOR": "floor", "OP_CEIL": "ceil",
}  # fmt: skip
_LANE_BINARY = {"OP_POW": "pow", "OP_CONSTPOW": "pow", "OP_FMIN": "fmin", "OP_FMAX": "fmax", "OP_ATAN2": "atan2"}


def prelude_source() -> str:
    """``prelude.c``: the kernel's types and vector helpers, all that :func:`vector_source`'s C needs."""
    return package_source(__package__, "prelude.c")


def _c_double(v: float) -> str:
    """``v`` as an exact C literal."""
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return v.hex()


def vector_source(f: ca.Function, name: str = "prior_vec") -> str:
    """C of an SX function ``f(x (8), u (5)) -> (n,)`` on SIMD vectors of 4 cells: ``name(a, d, nv)`` adds ``f``
    at rows ``a[0..12 * nv]`` (states, then inputs, ``nv`` vectors apart) into ``d[0..(n - 1) * nv]``.

    Translated instruction by instruction from the ``SX`` graph (the one CasADi's own code generator writes
    as scalar C): arithmetic on whole vectors, ``exp``, ``pow`` and the other library functions lane by lane,
    so each lane computes what scalar code computes. The result compiles after :func:`prelude_source`.

    Raises
    ------
    ValueError
        If ``f`` is not an SX function of ``(x (8, 1), u (5, 1))`` with one column output.
    plant.engine.CompiledEngineError
        For an operation the translator does not know.
    """
    if not isinstance(f, ca.Function) or not f.is_a("SXFunction"):
        raise ValueError("vector_source needs an SX casadi.Function")
    ok = (f.n_in(), f.n_out()) == (2, 1) and [f.size_in(0), f.size_in(1)] == [(N_STATES, 1), (N_INPUTS, 1)]
    if not ok or f.size_out(0)[1] != 1:
        raise ValueError(f"vector_source needs f(x ({N_STATES}, 1), u ({N_INPUTS}, 1)) -> (n, 1)")
    names = {getattr(ca, n): n for n in dir(ca) if n.startswith("OP_") and isinstance(getattr(ca, n), int)}
    lines = []
    for k in range(f.n_instructions()):
        op = names.get(f.instruction_id(k), str(f.instruction_id(k)))
        i, o = f.instruction_input(k), f.instruction_output(k)
        w = [f"w[{j}]" for j in i]
        if op == "OP_CONST":
            rhs_ = f"bcast({_c_double(float(f.instruction_constant(k)))})"
        elif op == "OP_INPUT":
            rhs_ = f"a[{(0 if i[0] == 0 else N_STATES) + i[1]} * nv]"
        elif op == "OP_OUTPUT":
            lines.append(f"    d[{o[1]} * nv] += w[{i[0]}];")
            continue
        elif op in _VEC_BINARY:
            rhs_ = f"{w[0]} {_VEC_BINARY[op]} {w[1]}"
        elif op in _VEC_COMPARE:
            rhs_ = f"truth({w[0]} {_VEC_COMPARE[op]} {w[1]})"
        elif op == "OP_ASSIGN":
            rhs_ = w[0]
        elif op == "OP_NEG":
            rhs_ = f"-{w[0]}"
        elif op == "OP_TWICE":
            rhs_ = f"{w[0]} + {w[0]}"
        elif op == "OP_SQ":
            rhs_ = f"{w[0]} * {w[0]}"
        elif op == "OP_INV":
            rhs_ = f"bcast(1.0) / {w[0]}"
        elif op == "OP_NOT":
            rhs_ = f"truth({w[0]} == bcast(0.0))"
        elif op == "OP_AND":
            rhs_ = f"truth(({w[0]} != bcast(0.0)) & ({w[1]} != bcast(0.0)))"
        elif op == "OP_OR":
            rhs_ = f"truth(({w[0]} != bcast(0.0)) | ({w[1]} != bcast(0.0)))"
        elif op == "OP_IF_ELSE_ZERO":
            rhs_ = f"(vd)((vl){w[1]} & (vl)({w[0]} != bcast(0.0)))"
        elif op in _LANE_UNARY:
            rhs_ = f"MAP1({_LANE_UNARY[op]}, {w[0]})"
        elif op in _LANE_BINARY:
            rhs_ = f"MAP2({_LANE_BINARY[op]}, {w[0]}, {w[1]})"
        else:
            raise CompiledEngineError(f"the CasADi operation {op} (in {f.name()}) is not supported by the kernel")
        lines.append(f"    w[{o[0]}] = {rhs_};")
    body = "\n".join(lines)
    return f"AI void {name}(const vd *a, vd *d, const int nv) {{\n    vd w[{max(f.sz_w(), 1)}];\n{body}\n}}\n"


def _outputs_function() -> ca.Function:
    """The algebraic outputs :data:`OUTPUT_ORDER` at ``(x, u)``, as an SX function."""
    x = ca.SX.sym("x", N_STATES)
    u = ca.SX.sym("u", N_INPUTS)
    alg = algebraic(x, u)
    return ca.Function("outputs", [x, u], [ca.vertcat(*(OUTPUT_FUNCTIONS[n](alg) for n in OUTPUT_ORDER))])


def kernel_source(prior: str) -> str:
    """C source of the rollout kernel for models with physics prior ``prior`` (a name of ``PRIORS``):
    ``prelude.c``, the algebraic outputs and the prior's :func:`plant.physics.rhs` on SIMD vectors
    (:func:`vector_source`), then ``kernel.c``."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; must be one of {sorted(PRIORS)}")
    params = PRIORS[prior]
    parts = [prelude_source(), f"#define NY {len(OUTPUT_ORDER)}\n", vector_source(_outputs_function(), "outputs_vec")]
    if params is None:
        parts.append("#define HAS_PRIOR 0\n")
    else:
        x = ca.SX.sym("x", N_STATES)
        u = ca.SX.sym("u", N_INPUTS)
        f = ca.Function(f"prior_{prior}", [x, u], [rhs(x, u, params)])
        parts += ["#define HAS_PRIOR 1\n", vector_source(f)]
    return "".join(parts) + "\n" + package_source(__package__, "kernel.c")
