"""Ensembles of MLPs as plain arrays: the architecture, the weights, and a numpy forward pass.

An ensemble of M members with the same architecture is stored as one array per layer: weights
``(M, n_in, n_out)``, biases ``(M, n_out)`` and, for exactly sparse models, boolean masks of the weights'
shape (a masked weight is a real zero). This is the exchange format between training (torch), files
(safetensors), the twin's rollouts and the CasADi export.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Architecture", "EnsembleWeights", "forward"]


@dataclass(frozen=True)
class Architecture:
    """A fully connected ReLU network ``n_in -> hidden... -> n_out``.

    With ``skip`` (InputSkip) the output layer sees the concatenation ``[z, h_1, ..., h_L]`` of the network
    input and every hidden layer instead of ``h_L`` alone.

    With ``blocks = n_out`` the hidden units are split into one equal block per output, and every weight
    after the first layer stays inside its block (block-diagonal structural masks): each output then has
    its own sub-network, and which inputs it uses is decided by the first layer alone (and by the input's
    skip row into that output). ``blocks = 1`` is the plain fully connected network.
    """

    n_in: int = 13
    hidden: tuple[int, ...] = (20, 20, 20, 20)
    n_out: int = 8
    skip: bool = False
    blocks: int = 1

    def __post_init__(self) -> None:
        sizes = (self.n_in, *self.hidden, self.n_out)
        if not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.blocks not in (1, self.n_out):
            raise ValueError(f"blocks must be 1 or n_out = {self.n_out}, got {self.blocks!r}")
        if any(h % self.blocks for h in self.hidden):
            raise ValueError(f"every hidden width must be a multiple of blocks = {self.blocks}, got {self.hidden}")

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(n_in, n_out)`` of each weight matrix, hidden layers first, output layer last."""
        sizes = (self.n_in, *self.hidden)
        shapes = list(itertools.pairwise(sizes))
        out_in = self.n_in + sum(self.hidden) if self.skip else sizes[-1]
        return (*shapes, (out_in, self.n_out))

    @property
    def n_skip_rows(self) -> int:
        """Rows of the output weight fed by the skip connections (input and hidden layers before the last)."""
        return self.n_in + sum(self.hidden[:-1]) if self.skip else 0

    @property
    def n_weights(self) -> int:
        return sum(a * b for a, b in self.layer_shapes)

    @property
    def n_biases(self) -> int:
        return sum(b for _, b in self.layer_shapes)

    def block_of_units(self, layer: int) -> np.ndarray:
        """Block index of each unit feeding weight matrix ``layer`` (its rows), ``(n_in_of_layer,)``; -1 for the
        network input, which feeds every block."""
        if layer == 0:
            return np.full(self.n_in, -1)
        if layer < len(self.hidden):
            return np.repeat(np.arange(self.blocks), self.hidden[layer - 1] // self.blocks)
        parts = [np.full(self.n_in, -1)] if self.skip else []
        for h in self.hidden if self.skip else self.hidden[-1:]:
            parts.append(np.repeat(np.arange(self.blocks), h // self.blocks))
        return np.concatenate(parts)

    def structural_masks(self) -> tuple[np.ndarray, ...] | None:
        """Per layer bool ``(n_in, n_out)`` masks of the block structure, or None for ``blocks = 1``."""
        if self.blocks == 1:
            return None
        masks = []
        for layer, (_, b) in enumerate(self.layer_shapes):
            rows = self.block_of_units(layer)
            per_out = self.n_out if layer == len(self.hidden) else b
            cols = np.repeat(np.arange(self.blocks), per_out // self.blocks)
            masks.append((rows[:, None] < 0) | (rows[:, None] == cols[None, :]))
        return tuple(masks)

    def as_dict(self) -> dict:
        return {
            "n_in": self.n_in,
            "hidden": list(self.hidden),
            "n_out": self.n_out,
            "skip": self.skip,
            "blocks": self.blocks,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        keys = {"n_in", "hidden", "n_out", "skip", "blocks"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"architecture must have exactly the keys {sorted(keys)}")
        if not isinstance(d["skip"], bool) or not isinstance(d["hidden"], list):
            raise ValueError("architecture.skip must be a boolean and architecture.hidden a list")
        for key in ("n_in", "n_out", "blocks"):
            if not isinstance(d[key], int) or isinstance(d[key], bool):
                raise ValueError(f"architecture.{key} must be an integer, got {d[key]!r}")
        if not all(isinstance(h, int) and not isinstance(h, bool) for h in d["hidden"]):
            raise ValueError(f"architecture.hidden must hold integers, got {d['hidden']!r}")
        return cls(d["n_in"], tuple(d["hidden"]), d["n_out"], d["skip"], d["blocks"])


@dataclass(frozen=True)
class EnsembleWeights:
    """Weights of an ensemble of M members (float64 arrays)."""

    architecture: Architecture
    weights: tuple[np.ndarray, ...]  # per layer (M, n_in, n_out)
    biases: tuple[np.ndarray, ...]  # per layer (M, n_out)
    masks: tuple[np.ndarray, ...] | None = None  # per layer bool (M, n_in, n_out); None: dense

    def __post_init__(self) -> None:
        shapes = self.architecture.layer_shapes
        if len(self.weights) != len(shapes) or len(self.biases) != len(shapes):
            raise ValueError(
                f"expected {len(shapes)} weight and bias arrays, got {len(self.weights)} and {len(self.biases)}"
            )
        m = np.shape(self.weights[0])[0] if np.ndim(self.weights[0]) == 3 else -1
        ws, bs = [], []
        for i, ((a, b), w, bias) in enumerate(zip(shapes, self.weights, self.biases, strict=True)):
            w = np.asarray(w, dtype=np.float64)
            bias = np.asarray(bias, dtype=np.float64)
            if w.shape != (m, a, b) or m < 1:
                raise ValueError(f"layer {i} weight must have shape (M, {a}, {b}) with M >= 1, got {w.shape}")
            if bias.shape != (m, b):
                raise ValueError(f"layer {i} bias must have shape ({m}, {b}), got {bias.shape}")
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(bias))):
                raise ValueError(f"layer {i} holds non-finite weights or biases")
            ws.append(w)
            bs.append(bias)
        masks: tuple[np.ndarray, ...] | None = None
        if self.masks is not None:
            if len(self.masks) != len(shapes):
                raise ValueError(f"expected {len(shapes)} masks, got {len(self.masks)}")
            checked = []
            for i, (w, mask) in enumerate(zip(ws, self.masks, strict=True)):
                mask = np.asarray(mask)
                if mask.shape != w.shape:
                    raise ValueError(f"layer {i} mask must have shape {w.shape}, got {mask.shape}")
                mask = mask.astype(bool)
                if np.any(w[~mask] != 0):
                    raise ValueError(f"layer {i} has non-zero weights where its mask is zero")
                checked.append(mask)
            masks = tuple(checked)
        object.__setattr__(self, "weights", tuple(ws))
        object.__setattr__(self, "biases", tuple(bs))
        object.__setattr__(self, "masks", masks)

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    def member(self, i: int) -> EnsembleWeights:
        """Member ``i`` alone, as an ensemble of one."""
        if not 0 <= i < self.n_members:
            raise ValueError(f"member index {i} out of range for an ensemble of {self.n_members}")
        pick = slice(i, i + 1)
        masks = None if self.masks is None else tuple(m[pick] for m in self.masks)
        return EnsembleWeights(
            self.architecture, tuple(w[pick] for w in self.weights), tuple(b[pick] for b in self.biases), masks
        )

    def nonzero(self, threshold: float = 0.0) -> np.ndarray:
        """Number of weights with ``|w| > threshold`` per member and layer, ``(M, L)`` (biases not counted)."""
        return np.stack([(np.abs(w) > threshold).sum(axis=(1, 2)) for w in self.weights], axis=1)


def forward(weights: EnsembleWeights, z: np.ndarray) -> np.ndarray:
    """Network output for standardised inputs ``z`` ``(M, S, n_in)`` (or ``(S, n_in)``, shared): ``(M, S, n_out)``."""
    arch = weights.architecture
    if z.ndim == 2:
        z = np.broadcast_to(z, (weights.n_members, *z.shape))
    h = z
    seen = [z]
    for w, b in zip(weights.weights[:-1], weights.biases[:-1], strict=True):
        h = np.maximum(np.matmul(h, w) + b[:, None, :], 0.0)
        seen.append(h)
    last_in = np.concatenate(seen, axis=-1) if arch.skip else h
    return np.matmul(last_in, weights.weights[-1]) + weights.biases[-1][:, None, :]
