"""Sparsity-inducing penalties behind one small base class, chosen by name.

Each penalty maps the ensemble's weight tensors (per layer ``(M, n_in, n_out)``) to one value per member
``(M,)``; the training loss sums the members' losses, so the members stay independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from identification.network import Architecture

__all__ = [
    "REGULARIZERS",
    "GroupInputPenalty",
    "input_groups",
    "L1Penalty",
    "NoPenalty",
    "Regularizer",
    "make_regularizer",
]


class Regularizer:
    """Base class: subclasses implement :meth:`penalty`."""

    name = "base"

    def penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        """Penalty per member, ``(M,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty()")


@dataclass(frozen=True)
class NoPenalty(Regularizer):
    """The dense baseline: no penalty."""

    name = "none"

    def penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        return torch.zeros(weights[0].shape[0], dtype=weights[0].dtype)


@dataclass(frozen=True)
class L1Penalty(Regularizer):
    """The published penalty ``lam_in ||W_1||_1 + lam sum_{l>=2} ||W_l||_1``.

    With InputSkip, the skip rows of the output layer get their own weight ``lam_skip`` (``lam`` if None).
    """

    lam: float = 1e-4
    lam_in: float = 1e-4
    lam_skip: float | None = None
    name = "l1"

    def penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        total = self.lam_in * weights[0].abs().sum(dim=(1, 2))
        for w in weights[1:-1]:
            total = total + self.lam * w.abs().sum(dim=(1, 2))
        out = weights[-1]
        k = arch.n_skip_rows
        lam_skip = self.lam if self.lam_skip is None else self.lam_skip
        if k:
            total = total + lam_skip * out[:, :k].abs().sum(dim=(1, 2))
        return total + self.lam * out[:, k:].abs().sum(dim=(1, 2))


def input_groups(weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
    """Squared norms of the groups of weights through which input j reaches block b, ``(M, n_in, blocks)``.

    A group is input j's first-layer row restricted to block b's units, plus (with InputSkip) its skip weights
    into block b's outputs. With ``blocks = 1`` a group is simply all of input j's fan-out.
    """
    first = weights[0]  # (M, n_in, h1)
    m, n_in, h1 = first.shape
    sq = (first * first).reshape(m, n_in, arch.blocks, h1 // arch.blocks).sum(dim=3)
    if arch.skip:
        direct = weights[-1][:, : arch.n_in]  # (M, n_in, n_out)
        sq = sq + (direct * direct).reshape(m, n_in, arch.blocks, arch.n_out // arch.blocks).sum(dim=3)
    return sq


@dataclass(frozen=True)
class GroupInputPenalty(Regularizer):
    """ℓ1 as :class:`L1Penalty` plus a group lasso over each (input, block) group (see :func:`input_groups`), so
    that whole inputs drop out of an output's sub-network and the dependency structure can emerge."""

    lam_group: float = 1e-3
    l1: L1Penalty = L1Penalty()
    name = "group"

    def penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        group = torch.sqrt(input_groups(weights, arch) + 1e-12).sum(dim=(1, 2))
        return self.l1.penalty(weights, arch) + self.lam_group * group


REGULARIZERS: dict[str, type[Regularizer]] = {"none": NoPenalty, "l1": L1Penalty, "group": GroupInputPenalty}


def make_regularizer(name: str, **settings: float) -> Regularizer:
    """A regularizer by name; the error lists the valid names."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; must be one of {sorted(REGULARIZERS)}")
    if name == "group":
        l1 = L1Penalty(**{k: v for k, v in settings.items() if k in ("lam", "lam_in", "lam_skip")})
        return GroupInputPenalty(lam_group=settings.get("lam_group", 1e-3), l1=l1)
    if name == "none":
        return NoPenalty()
    return L1Penalty(**{k: v for k, v in settings.items() if k in ("lam", "lam_in", "lam_skip")})
