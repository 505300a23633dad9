"""The model as the rollout kernel reads it: per member, layers of live units with their non-zero weights,
constants folded and dead units dropped, tiled for the kernel's register accumulators.

Every layer is a list of its live output units, each with its bias and the non-zero weights feeding it (a
sparse column). The input standardisation is folded into the first layer (and into the skip rows of an
InputSkip output layer), the output de-standardisation ``target_std``, ``target_mean`` (and ``1 / M`` for the
ensemble mean) into the output layer, as :mod:`identification.export` does for CasADi (its fold is reused).
Hidden units without any non-zero input weight are constants, folded into the next layer's biases; units whose
outgoing weights are all zero are dropped. Units are then tiled 2 or 4 to a tile (padded with zero weights on
a zero row), and for member quads four members' units are merged into one with a weight per lane.

A float32 program (``ModelPrograms.build(..., precision="float32")``, single members only) keeps its weights
and biases in float32 and the normalisation out of them: the kernel standardises the inputs and
de-standardises the outputs in float64 (``Program.scale``), as the numpy float32 reference
(:mod:`identification.rollout.reference`) does, so the float32 rounding never meets the raw signals' large
offsets (a current of 136 kA, a metal pad of 9.9 t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from identification.export import member_layers
from identification.network import Architecture
from identification.surrogate import Surrogate
from plant.signals import N_STATES

__all__ = ["PRECISIONS", "TILES", "TILES32", "VL", "ModelPrograms", "Program", "Unit", "check_precision"]

PRECISIONS = ("float64", "float32")
"""The arithmetic of the network layers: ``float64`` (the reference) or ``float32`` (states still in float64)."""

VL = 4  # doubles per SIMD vector, and members per member quad (VL in the kernel)
TILES = {1: 4, 2: 4, 4: 2}  # vectors per activation row -> entries per tile (TILE(nv) in the kernel); 8
# vectors (32 cells, one entry per tile) measured no faster than 4
TILES32 = {2: 4, 4: 4, 8: 2}  # float32 programs (single members): vectors of 4 doubles per activation row
# (the states' layout; the layers hold nv / 2 vectors of 8 floats, 8 to 32 cells) -> entries per tile
# (TILE32(nv) in the kernel): always 8 accumulators for 16 or 32 cells, to hide the adder's latency

Unit = tuple[int, Any, np.ndarray, np.ndarray]  # dst row, bias, src rows (n,) ascending, weights (n,) [member quads:
# bias (4,) and weights (n, 4), one lane per member]


@dataclass(frozen=True)
class Program:
    """Groups (single members, or member quads) of layers of tiles of entries (output units); each tile is
    a number of rounds, a round one weight per entry, padded with zero weights on a zero row."""

    quad: bool
    tile: int
    n_groups: int
    n_layers: int
    n_members: int
    n_rows: int  # activation rows: the 13 inputs, every hidden unit, a zero row and a trash row
    grp_tiles: np.ndarray  # (G * L + 1,) int32: first tile of each group's layer
    tile_dst: np.ndarray  # (n_tiles, tile) int32
    tile_bias: np.ndarray  # (n_tiles, tile) float64; quads: (n_tiles, tile, 4)
    tile_rounds: np.ndarray  # (n_tiles + 1,) int32: first round of each tile
    tile_shared: np.ndarray  # (n_tiles,) uint8: 1 where all entries read the same rows (one load serves all)
    nz_src: np.ndarray  # (rounds, tile) int32
    nz_w: np.ndarray  # (rounds, tile) float64; quads: (rounds, tile, 4); float32 programs: float32
    scale: np.ndarray | None = None  # float32 programs: (44,) input mean (13), 1 / std (13), output scale, shift (9
    # each, the 9th for the padding entries' trash row); None: float64, the normalisation folded in


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming the valid ones."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def _row_units(arch: Architecture, layer: int) -> np.ndarray:
    """Activation rows feeding weight matrix ``layer``: inputs are rows 0..12, then hidden units in order."""
    starts = np.cumsum([arch.n_in, *arch.hidden])  # first row of hidden layer l is starts[l]
    if layer == 0:
        return np.arange(arch.n_in)
    if layer < len(arch.hidden):
        return np.arange(starts[layer - 1], starts[layer])
    if arch.skip:
        return np.arange(starts[-1])
    return np.arange(starts[-2], starts[-1])


def _member_units(arch: Architecture, ws: list[np.ndarray], bs: list[np.ndarray]) -> list[list[Unit]]:
    """One member's layers as units ``(dst, bias, src rows, weights)``, constants folded and dead units dropped.

    A hidden unit without non-zero input weights is the constant ``relu(bias)``, added into the biases of the
    units it feeds; a hidden unit that no live unit reads is dropped. The output layer keeps all its units.
    """
    starts = np.cumsum([arch.n_in, *arch.hidden])
    n_rows = int(starts[-1])
    is_const = np.zeros(n_rows, dtype=bool)  # rows whose unit has no non-zero input weight
    value = np.zeros(n_rows)  # and its constant value
    layers: list[list[Unit]] = []
    for layer, (w, b) in enumerate(zip(ws, bs, strict=True)):
        rows = _row_units(arch, layer)
        last = layer == len(ws) - 1
        folded = is_const[rows]
        bias = b + value[rows[folded]] @ w[folded] if folded.any() else b.copy()  # (n_out,)
        w = np.where(folded[:, None], 0.0, w)
        units = []
        for o in range(w.shape[1]):
            nz = np.flatnonzero(w[:, o])
            dst = o if last else int(starts[layer]) + o
            if not last and nz.size == 0:
                is_const[dst], value[dst] = True, max(float(bias[o]), 0.0)
                continue
            units.append((dst, float(bias[o]), rows[nz], w[nz, o]))
        layers.append(units)
    live = np.zeros(n_rows + 1, dtype=bool)
    for unit in layers[-1]:
        live[unit[2]] = True
    for layer in range(len(layers) - 2, -1, -1):
        layers[layer] = [unit for unit in layers[layer] if live[unit[0]]]
        for unit in layers[layer]:
            live[unit[2]] = True
    return layers


def _quad_units(members: list[list[list[Unit]]]) -> list[list[Unit]]:
    """Four members' layers as one, with a bias and a weight per lane (member): the union of their units and
    of each unit's sources, with a zero weight where a member lacks one (adding ``0 * a`` to a finite sum
    leaves it unchanged, bit for bit, so a member's lane computes what it computes alone)."""
    layers: list[list[Unit]] = []
    for per_member in zip(*members, strict=True):
        by_dst: dict[int, dict[int, Unit]] = {}
        for j, units in enumerate(per_member):
            for unit in units:
                by_dst.setdefault(unit[0], {})[j] = unit
        merged = []
        for dst in sorted(by_dst):
            parts = by_dst[dst]
            src = np.unique(np.concatenate([unit[2] for unit in parts.values()]))
            bias = np.zeros(VL)
            w = np.zeros((src.size, VL))
            for j, (_, b, s, v) in parts.items():
                bias[j] = b
                w[np.searchsorted(src, s), j] = v
            merged.append((dst, bias, src, w))
        layers.append(merged)
    return layers


def _flatten(
    groups: list[list[list[Unit]]], quad: bool, tile: int, n_members: int, n_units: int, scale: np.ndarray | None
) -> Program:
    """Tile each layer's units, longest first (which pads least), ``tile`` to a tile; a float32 program (with
    ``scale``) rounds its weights and biases to float32."""
    zero_row, trash_row = n_units, n_units + 1
    lanes = (VL,) if quad else ()
    tiles: list[tuple[int, list[Unit]]] = []  # (padding destination, units)
    grp_tiles = [0]
    for layers in groups:
        for li, units in enumerate(layers):
            trash = N_STATES if li == len(layers) - 1 else trash_row  # where padding entries write
            order = sorted(units, key=lambda e: (-e[2].size, e[0]))
            tiles += [(trash, order[t0 : t0 + tile]) for t0 in range(0, len(order), tile)]
            grp_tiles.append(len(tiles))
    n_rounds = [max(unit[2].size for unit in part) for _, part in tiles]
    tile_rounds = np.concatenate([[0], np.cumsum(n_rounds, dtype=np.int64)]).astype(np.int32)
    tile_dst = np.empty((len(tiles), tile), dtype=np.int32)
    tile_shared = np.zeros(len(tiles), dtype=np.uint8)
    tile_bias = np.zeros((len(tiles), tile, *lanes))
    nz_src = np.full((int(tile_rounds[-1]), tile), zero_row, dtype=np.int32)
    nz_w = np.zeros((int(tile_rounds[-1]), tile, *lanes))
    for t, (trash, part) in enumerate(tiles):
        tile_dst[t] = trash
        r0 = tile_rounds[t]
        first = part[0][2]
        tile_shared[t] = len(part) == tile and all(np.array_equal(unit[2], first) for unit in part[1:])
        for p, (dst, bias, src, w) in enumerate(part):
            tile_dst[t, p] = dst
            tile_bias[t, p] = bias
            nz_src[r0 : r0 + src.size, p] = src
            nz_w[r0 : r0 + src.size, p] = w
    dtype = np.float64 if scale is None else np.float32
    return Program(
        quad=quad,
        tile=tile,
        n_groups=len(groups),
        n_layers=len(groups[0]),
        n_members=n_members,
        n_rows=n_units + 2,
        grp_tiles=np.asarray(grp_tiles, dtype=np.int32),
        tile_dst=tile_dst,
        tile_bias=tile_bias.astype(dtype),
        tile_rounds=tile_rounds,
        tile_shared=tile_shared,
        nz_src=nz_src,
        nz_w=nz_w.astype(dtype),
        scale=scale,
    )


@dataclass(frozen=True)
class ModelPrograms:
    """A model prepared for the kernel: single-member programs per tile size and member quads (float64 only)."""

    single: dict[int, Program]  # tile -> program
    quads: Program | None  # None for float32 programs
    nonzeros: float  # multiply-adds per member, cell and step

    @classmethod
    def build(cls, surrogate: Surrogate, mean: bool, precision: str = "float64") -> ModelPrograms:
        """Fold the normalisation (and ``1 / M`` for the ensemble mean) into the weights, compact and tile;
        for ``precision="float32"``, keep the normalisation apart (:attr:`Program.scale`) and round to float32."""
        check_precision(precision)
        weights, norm = surrogate.weights, surrogate.normalization
        arch = weights.architecture
        n = weights.n_members
        scale = 1.0 / n if mean else 1.0
        f32 = precision == "float32"
        members = []
        for m in range(n):
            if f32:  # standardised inputs in, standardised outputs out: the kernel does both in float64
                ws, bs = member_layers(weights, m, np.zeros(arch.n_in), np.ones(arch.n_in), np.ones(arch.n_out))
            else:
                ws, bs = member_layers(weights, m, norm.feature_mean, norm.feature_std, norm.target_std * scale)
                bs[-1] = bs[-1] + norm.target_mean * scale
            members.append(_member_units(arch, ws, bs))
        n_units = arch.n_in + sum(arch.hidden)
        nonzeros = sum(unit[2].size for layers in members for units in layers for unit in units) / n
        if f32:
            out_scale = np.append(norm.target_std * scale, 0.0)
            out_shift = np.append(norm.target_mean * scale, 0.0)
            table = np.concatenate([norm.feature_mean, 1.0 / norm.feature_std, out_scale, out_shift])
            table = table.astype(np.float64)
            single = {t: _flatten(members, False, t, n, n_units, table) for t in sorted(set(TILES32.values()))}
            return cls(single=single, quads=None, nonzeros=nonzeros)
        quads = [_quad_units([members[min(g + j, n - 1)] for j in range(VL)]) for g in range(0, n, VL)]
        return cls(
            single={t: _flatten(members, False, t, n, n_units, None) for t in sorted(set(TILES.values()))},
            quads=_flatten(quads, True, TILES[1], n, n_units, None),
            nonzeros=nonzeros,
        )
