"""Shared fixtures: the spec's test vectors and small seeded data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def plant_vectors() -> dict:
    """``shared/spec/plant_vectors.json``: the plant's reference values (tolerance: relative 1e-9)."""
    path = SHARED / "spec" / "plant_vectors.json"
    if not path.is_file():
        raise FileNotFoundError(f"the spec's test vectors are missing: {path}")
    return json.loads(path.read_text())
