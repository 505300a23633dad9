"""A surrogate as a CasADi ``Function`` of ``(x, u)``, built from its weights with exact zeros dropped.

The normalisation is folded into the weights (the first layer, and the skip rows of an InputSkip output layer,
absorb ``1 / std`` and ``-mean / std``; the output layer absorbs the de-standardisation ``target_std``,
``target_mean`` and, for the ensemble mean, ``1 / M``), and each layer is written as explicit sums over its
non-zero weights only, so a sparser model gives a smaller graph: one multiplication and one addition per
non-zero weight and one ``fmax`` per hidden unit. Units without any non-zero input weight are constants and are
folded into the next layer's biases; units whose outgoing weights are all zero never reach an output and so are
not in the graph. ReLU is ``casadi.fmax(., 0)``; a hybrid model adds its
physics prior, ``plant.physics.rhs`` with the prior's parameters, evaluated on the same symbols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from identification.network import EnsembleWeights
from identification.surrogate import PRIORS, Surrogate
from plant.physics import rhs
from plant.signals import N_INPUTS, N_STATES

__all__ = ["WHATS", "compare_sparse_dense", "member_layers", "operation_count", "to_casadi"]

WHATS = ("derivative", "step")
"""What an exported function returns: the derivative ``dx/dt`` or the explicit-Euler next state."""

_OP_NAMES: dict[int, str] = {
    getattr(ca, n): n[3:].lower() for n in dir(ca) if n.startswith("OP_") and isinstance(getattr(ca, n), int)
}
_NOT_ARITHMETIC = {"const", "input", "output", "parameter", "assign"}


def member_layers(
    weights: EnsembleWeights, m: int, mean: np.ndarray, std: np.ndarray, out_scale: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Member ``m``'s weights ``(n_in, n_out)`` and biases ``(n_out,)`` with the normalisation folded in.

    The input standardisation ``z = (v - mean) / std`` is folded into every weight row that sees ``z`` (the
    first layer, and the first ``n_in`` rows of an InputSkip output layer); the output layer is multiplied by
    ``out_scale`` (``target_std``, divided by M for an ensemble mean). Exact zeros stay exact zeros.
    """
    arch = weights.architecture
    ws = [np.array(w[m], dtype=np.float64) for w in weights.weights]
    bs = [np.array(b[m], dtype=np.float64) for b in weights.biases]
    inv = 1.0 / std  # (13,)
    shift = mean / std  # (13,)
    folds = [0] + ([len(ws) - 1] if arch.skip and len(ws) > 1 else [])
    for k in folds:
        rows = ws[k][: arch.n_in]  # (13, n_out)
        bs[k] = bs[k] - shift @ rows
        ws[k][: arch.n_in] = rows * inv[:, None]
    ws[-1] = ws[-1] * out_scale[None, :]
    bs[-1] = bs[-1] * out_scale
    return ws, bs


@dataclass(frozen=True)
class _Units:
    """A layer's activations: the symbolic units as one SX column, the constant ones as numbers."""

    sym: ca.SX  # (p, 1) the units that depend on (x, u), in order
    is_const: np.ndarray  # (n,) bool
    value: np.ndarray  # (n,) the constant units' values (0 where symbolic)

    @staticmethod
    def concat(parts: list[_Units]) -> _Units:
        return _Units(
            ca.vertcat(*[p.sym for p in parts]),
            np.concatenate([p.is_const for p in parts]),
            np.concatenate([p.value for p in parts]),
        )


def _affine(w: np.ndarray, b: np.ndarray, h: _Units) -> tuple[ca.SX, np.ndarray, np.ndarray]:
    """``h @ w + b`` over the non-zero weights of ``w`` ``(n_in, n_out)`` only.

    Returns the symbolic part ``(n_out, 1)`` (structurally zero where an output has no non-zero weight from a
    symbolic unit), the constant part ``(n_out,)`` (bias plus constant units) and which outputs are constant.
    """
    const = b + h.value[h.is_const] @ w[h.is_const]  # (n_out,)
    ws = w[~h.is_const]  # (p, n_out)
    rows, cols = np.nonzero(ws)
    w_dm = ca.DM.triplet(cols.tolist(), rows.tolist(), ws[rows, cols].tolist(), ws.shape[1], ws.shape[0])
    sym = ca.mtimes(w_dm, h.sym)  # (n_out, 1): one multiplication per non-zero weight
    return sym, const, ~np.any(ws != 0, axis=0)


def _hidden(w: np.ndarray, b: np.ndarray, h: _Units) -> _Units:
    """A ReLU layer: symbolic outputs ``fmax(., 0)``, constant outputs evaluated."""
    sym, const, is_const = _affine(w, b, h)
    keep = np.flatnonzero(~is_const).tolist()
    pre = sym[keep] + ca.DM(const[keep]) if keep else ca.SX(0, 1)
    return _Units(ca.fmax(pre, 0), is_const, np.where(is_const, np.maximum(const, 0.0), 0.0))


def _member_output(
    weights: EnsembleWeights, m: int, inputs: ca.SX, mean: np.ndarray, std: np.ndarray, out_scale: np.ndarray
) -> tuple[ca.SX, np.ndarray]:
    """Member ``m``'s scaled output layer: the symbolic part ``(8, 1)`` and the constant part ``(8,)``."""
    ws, bs = member_layers(weights, m, mean, std, out_scale)
    n_in = weights.architecture.n_in
    h = _Units(inputs, np.zeros(n_in, dtype=bool), np.zeros(n_in))
    seen = [h]
    for w, b in zip(ws[:-1], bs[:-1], strict=True):
        h = _hidden(w, b, h)
        seen.append(h)
    last_in = _Units.concat(seen) if weights.architecture.skip else h
    sym, const, _ = _affine(ws[-1], bs[-1], last_in)
    return sym, const


def to_casadi(
    surrogate: Surrogate,
    member: int | None = None,
    mean: bool = False,
    what: str = "derivative",
    name: str | None = None,
) -> ca.Function:
    """The surrogate as a CasADi SX ``Function`` ``(x (8, 1), u (5, 1)) -> (8, 1)``.

    Parameters
    ----------
    surrogate : the model (any prior of :data:`identification.surrogate.PRIORS`).
    member : which ensemble member; may be left out for an ensemble of one.
    mean : the ensemble-mean derivative instead of one member.
    what : ``"derivative"`` (output ``dxdt``, per second) or ``"step"`` (output ``x_next = x + dt * dxdt``).
    name : the function's name (default ``surrogate_<what>``).

    Returns
    -------
    casadi.Function with inputs ``x``, ``u`` and output ``dxdt`` or ``x_next``.
    """
    if not isinstance(surrogate, Surrogate):
        raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
    if what not in WHATS:
        raise ValueError(f"unknown what {what!r}; must be one of {list(WHATS)}")
    n = surrogate.n_members
    if mean:
        if member is not None:
            raise ValueError("give either member or mean=True, not both")
        members = list(range(n))
    elif member is None:
        if n != 1:
            raise ValueError(f"the ensemble has {n} members: choose member=0..{n - 1} or mean=True")
        members = [0]
    else:
        if isinstance(member, bool) or not isinstance(member, (int, np.integer)) or not 0 <= member < n:
            raise ValueError(f"member must be an integer in [0, {n}), got {member!r}")
        members = [int(member)]

    norm = surrogate.normalization
    x = ca.SX.sym("x", N_STATES)
    u = ca.SX.sym("u", N_INPUTS)
    inputs = ca.vertcat(x, u)  # (13, 1)
    out_scale = norm.target_std / len(members)  # (8,)

    net: ca.SX | None = None  # (8, 1) symbolic part of the (mean) network output
    const = norm.target_mean.copy()  # (8,) its constant part
    for m in members:
        sym, c = _member_output(surrogate.weights, m, inputs, norm.feature_mean, norm.feature_std, out_scale)
        net = sym if net is None else net + sym
        const = const + c
    net = ca.densify(net + ca.DM(const))  # (8, 1)

    params = PRIORS[surrogate.prior]
    dxdt = net if params is None else rhs(x, u, params) + net
    if what == "derivative":
        return ca.Function(name or "surrogate_derivative", [x, u], [dxdt], ["x", "u"], ["dxdt"])
    return ca.Function(name or "surrogate_step", [x, u], [x + surrogate.dt * dxdt], ["x", "u"], ["x_next"])


def operation_count(f: ca.Function) -> dict[str, Any]:
    """Size of an SX function's graph.

    Returns
    -------
    dict with ``n_nodes`` and ``n_instructions`` (CasADi's own counts), ``mul`` (multiplications), ``add``
    (additions and subtractions), ``fmax``, ``arithmetic`` (all operations other than constants, inputs and
    outputs) and ``by_op`` (instruction count per CasADi operation name).
    """
    if not isinstance(f, ca.Function) or not f.is_a("SXFunction"):
        raise ValueError("operation_count needs an SX casadi.Function (as made by to_casadi)")
    by_op: dict[str, int] = {}
    for k in range(f.n_instructions()):
        op = _OP_NAMES.get(f.instruction_id(k), str(f.instruction_id(k)))
        by_op[op] = by_op.get(op, 0) + 1
    return {
        "n_nodes": int(f.n_nodes()),
        "n_instructions": int(f.n_instructions()),
        "mul": by_op.get("mul", 0),
        "add": by_op.get("add", 0) + by_op.get("sub", 0),
        "fmax": by_op.get("fmax", 0),
        "arithmetic": sum(c for op, c in by_op.items() if op not in _NOT_ARITHMETIC),
        "by_op": dict(sorted(by_op.items())),
    }


def _densified(surrogate: Surrogate) -> Surrogate:
    """The same model with every exact zero weight replaced by a placeholder non-zero (for counting only)."""
    w = surrogate.weights
    placeholder = np.pi * 1e-3  # no value CasADi simplifies (0 or +-1)
    dense = EnsembleWeights(w.architecture, tuple(np.where(a == 0, placeholder, a) for a in w.weights), w.biases, None)
    return Surrogate(dense, surrogate.normalization, surrogate.prior, envelope=surrogate.envelope)


def compare_sparse_dense(
    surrogate: Surrogate, member: int | None = None, mean: bool = False, what: str = "derivative"
) -> dict[str, Any]:
    """Operation counts of the export with exact zeros dropped versus the same architecture fully dense.

    Returns
    -------
    dict with ``sparse`` and ``dense`` (:func:`operation_count` of each), ``nonzero_weights`` and ``weights``
    (of the exported members) and ``ratio`` (sparse / dense arithmetic operations).
    """
    sparse = operation_count(to_casadi(surrogate, member=member, mean=mean, what=what))
    dense = operation_count(to_casadi(_densified(surrogate), member=member, mean=mean, what=what))
    nz = surrogate.weights.nonzero()  # (M, L)
    rows = slice(None) if mean else [0 if member is None else int(member)]
    return {
        "sparse": sparse,
        "dense": dense,
        "nonzero_weights": int(nz[rows].sum()),
        "weights": surrogate.weights.architecture.n_weights * (surrogate.n_members if mean else 1),
        "ratio": sparse["arithmetic"] / dense["arithmetic"],
    }
