"""Helpers of the online identification modules: the model argument and the settings' validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from identification.modelfile import LoadedModel
from identification.surrogate import Surrogate

__all__ = ["as_surrogate", "check_positive", "finite_or_none"]


def as_surrogate(model: Surrogate | LoadedModel, name: str) -> Surrogate:
    """The surrogate of ``model`` (a LoadedModel's, or the Surrogate itself); ValueError naming ``name``."""
    if isinstance(model, LoadedModel):
        return model.surrogate
    if isinstance(model, Surrogate):
        return model
    raise ValueError(f"{name} must be a Surrogate or a LoadedModel, got {type(model).__name__}")


def check_positive(owner: str, name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    """ValueError naming ``owner.name`` unless ``value`` is a finite number (an integer if asked) > 0 (>= 0)."""
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ValueError(f"{owner}.{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def finite_or_none(v: float) -> float | None:
    """``v`` as a float, or None where it is not finite (JSON has no NaN or inf)."""
    return float(v) if math.isfinite(v) else None
