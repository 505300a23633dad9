"""Sparsity-inducing penalties behind one small base class, chosen by name.

Each penalty maps the ensemble's weight tensors (per layer ``(M, n_in, n_out)``) to one value per member
``(M,)``; the training loss sums the members' losses, so the members stay independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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

    def loss_penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        """The part of :meth:`penalty` whose gradient enters the loss (all of it, unless a part is applied as a
        proximal step instead)."""
        return self.penalty(weights, arch)

    def proximal_lams(self, arch: Architecture) -> list[np.ndarray] | None:
        """Per layer ``(n_in, n_out)``, the ℓ1 weight applied by a proximal step after each optimiser step
        (None: no proximal step)."""
        return None

    @property
    def has_proximal_step(self) -> bool:
        """Whether some part of the penalty is applied as a proximal step (its zeros are then exact)."""
        return False


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

    ``proximal``: instead of adding the penalty's subgradient to the loss (which, with Adam, leaves weights
    small but almost never zero), each optimiser step is followed by the penalty's proximal step in Adam's own
    metric (ProxGen, Yun et al. 2021): ``w <- sign(w) max(|w| - lr lam / d, 0)`` with ``d`` Adam's
    denominator ``sqrt(v_hat) + eps`` of that weight. A weight then stays exactly zero while its data
    gradient's running mean is below ``lam`` (the ℓ1 optimality condition), so the zeros appear during
    training and the non-zero count is a tracked quantity (``TrainResult.extra["nonzeros"]``).
    """

    lam: float = 1e-4
    lam_in: float = 1e-4
    lam_skip: float | None = None
    proximal: bool = False
    name = "l1"

    def weight_lams(self, arch: Architecture) -> list[np.ndarray]:
        """The ℓ1 weight of every weight, per layer ``(n_in, n_out)`` (float64): exactly the factors of
        :meth:`penalty` (with no hidden layer the one matrix is both first and output layer: both terms)."""
        shapes = arch.layer_shapes
        lam_skip = self.lam if self.lam_skip is None else self.lam_skip
        out = [np.full(shape, self.lam, dtype=np.float64) for shape in shapes]
        out[0] = np.full(shapes[0], self.lam_in, dtype=np.float64) + (out[0] if len(shapes) == 1 else 0.0)
        k = arch.n_skip_rows
        if k:
            out[-1][:k] += lam_skip - self.lam
        return out

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

    def loss_penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        return (
            torch.zeros(weights[0].shape[0], dtype=weights[0].dtype) if self.proximal else self.penalty(weights, arch)
        )

    def proximal_lams(self, arch: Architecture) -> list[np.ndarray] | None:
        return self.weight_lams(arch) if self.proximal else None

    @property
    def has_proximal_step(self) -> bool:
        return self.proximal


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
    that whole inputs drop out of an output's sub-network and the dependency structure can emerge.

    ``proximal``: the group lasso is applied as a proximal step after each optimiser step (after the ℓ1 one
    when that is proximal too: the sparse-group-lasso composition), each group shrinking by
    ``lr lam_group / d`` with ``d`` the mean of Adam's denominators over the group, so that whole groups become
    exact zeros during training."""

    lam_group: float = 1e-3
    l1: L1Penalty = L1Penalty()
    proximal: bool = False
    name = "group"

    def penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        return self.l1.penalty(weights, arch) + self._group(weights, arch)

    def _group(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        return self.lam_group * torch.sqrt(input_groups(weights, arch) + 1e-12).sum(dim=(1, 2))

    def loss_penalty(self, weights: list[torch.Tensor], arch: Architecture) -> torch.Tensor:
        group = (
            torch.zeros(weights[0].shape[0], dtype=weights[0].dtype) if self.proximal else self._group(weights, arch)
        )
        return self.l1.loss_penalty(weights, arch) + group

    def proximal_lams(self, arch: Architecture) -> list[np.ndarray] | None:
        return self.l1.proximal_lams(arch)

    @property
    def has_proximal_step(self) -> bool:
        return self.proximal or self.l1.proximal


REGULARIZERS: dict[str, type[Regularizer]] = {"none": NoPenalty, "l1": L1Penalty, "group": GroupInputPenalty}


_L1_SETTINGS = ("lam", "lam_in", "lam_skip", "proximal")


def make_regularizer(name: str, **settings: float) -> Regularizer:
    """A regularizer by name; the error lists the valid names. ``proximal`` (truthy) makes the ℓ1 part a
    proximal step (see :class:`L1Penalty`)."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; must be one of {sorted(REGULARIZERS)}")
    l1_settings: dict = {k: v for k, v in settings.items() if k in _L1_SETTINGS}
    if "proximal" in l1_settings:
        l1_settings["proximal"] = bool(l1_settings["proximal"])
    if name == "group":
        return GroupInputPenalty(
            lam_group=settings.get("lam_group", 1e-3),
            l1=L1Penalty(**l1_settings),
            proximal=bool(settings.get("proximal", False)),
        )
    if name == "none":
        return NoPenalty()
    return L1Penalty(**l1_settings)
