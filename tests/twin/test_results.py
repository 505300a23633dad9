"""The twin's result types (:mod:`twin.results`): each survives its message both ways, the registry, the servicers
and the client share them, and the client imports neither the server nor the registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alutwin.v1 import twin_pb2
from twin import client as twin_client
from twin import registry as twin_registry
from twin.results import (
    DEPENDENCY_COLS,
    DEPENDENCY_ROWS,
    Dependency,
    EventType,
    ExportedModel,
    LayerSparsity,
    ModelExplanation,
    ModelId,
    ModelSummary,
    RegistryEvent,
    VersionInfo,
)

REPO = Path(__file__).resolve().parents[2]


def _dependency(seed: int) -> Dependency:
    share = np.random.default_rng(seed).integers(0, 4, (8, 13)) / 3  # (8, 13) shares of 3 members
    return Dependency(share, {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "entries": 17})


def _round_trip(value):
    msg = value.to_pb()
    return type(value).from_pb(type(msg).FromString(msg.SerializeToString()))


def test_model_summary_and_registry_events_round_trip():
    summary = ModelSummary("cell", {1: ("dense", "2024-01-01T00:00:00Z", ""), 2: ("sparse", "t", "pruned")}, {"a": 2})
    assert _round_trip(summary) == summary
    snapshot = RegistryEvent(7, EventType.SNAPSHOT, time_ms=123, models=(summary,))
    moved = RegistryEvent(8, EventType.ALIAS_MOVED, "cell", 2, "champion", 1, 456)
    for event in (snapshot, moved):
        back = _round_trip(event)
        assert back == event and back.type is event.type
    assert moved.to_pb().type == twin_pb2.REGISTRY_EVENT_TYPE_ALIAS_MOVED
    assert EventType.ROLLED_BACK == "ROLLED_BACK" and EventType.SNAPSHOT.number == twin_pb2.REGISTRY_EVENT_TYPE_SNAPSHOT
    unknown = RegistryEvent.from_pb(twin_pb2.RegistryEvent(revision=1, type=99))  # a kind this client does not know
    assert unknown.type is EventType.UNSPECIFIED


def test_event_type_prints_as_its_name():
    # the client's event types used to be plain strings: str(), f-strings and format() must still give the name
    moved = RegistryEvent(8, EventType.ALIAS_MOVED, "cell", 2, "champion", 1, 456)
    assert str(moved.type) == "ALIAS_MOVED" and f"{moved.type}" == "ALIAS_MOVED"
    assert f"{EventType.SNAPSHOT:>10}|" == "  SNAPSHOT|" and format(EventType.ROLLED_BACK) == "ROLLED_BACK"
    assert repr(EventType.SNAPSHOT) == "<EventType.SNAPSHOT: 'SNAPSHOT'>"  # repr still names the enum


def test_explanations_and_version_info_round_trip():
    layers = (LayerSparsity(13, 16, 624, 300, 120), LayerSparsity(16, 8, 384, 100, 90))
    ex = ModelExplanation(
        layers=layers,
        weight_threshold=0.01,
        path=_dependency(0),
        thresholded_path=_dependency(1),
        jacobian=_dependency(2),
        jacobian_points=256,
        jacobian_rel_threshold=0.01,
        metrics={"rmse": [1.5, 2.0]},
        provenance={"seed": 7},
        model=ModelId("cell", 3, "champion"),
    )
    back = _round_trip(ex)
    assert back.layers == layers and back.model == ex.model and back.metrics == ex.metrics
    for name in ("path", "thresholded_path", "jacobian"):
        got, sent = getattr(back, name), getattr(ex, name)
        np.testing.assert_array_equal(got.share, sent.share)  # doubles travel exactly
        assert got.scores == sent.scores and got.rows == DEPENDENCY_ROWS and got.cols == DEPENDENCY_COLS
    assert [m.layer for m in ex.to_pb().layers] == [0, 1]
    assert DEPENDENCY_ROWS[5] == "dT_bath/dt" and DEPENDENCY_COLS[12] == "acd"
    info = VersionInfo(
        model=ModelId("cell", 3),
        aliases=("champion",),
        kind="sparse",
        prior="none",
        n_members=3,
        hidden=(16, 16),
        skip=False,
        blocks=1,
        dt=10.0,
        exactly_sparse=True,
        nonzero_weights=400,
        total_weights=1776,
        created="c",
        registered="r",
        description="d",
        weights_sha256="ab" * 32,
        loaded=True,
        n_in=13,
        n_out=8,
    )
    assert _round_trip(info) == info
    exported = ExportedModel(ModelId("cell", 3, "champion"), b'{"format": 1}', b"\0\1")
    assert _round_trip(exported) == exported


def test_one_definition_of_each_result_type():
    for name in ("Dependency", "EventType", "ExportedModel", "ModelExplanation", "ModelId", "RegistryEvent"):
        assert getattr(twin_client, name) is getattr(sys.modules["twin.results"], name)
    assert not hasattr(twin_registry, "Explanation") and not hasattr(twin_registry, "LayerStats")
    with pytest.raises(AttributeError):
        twin_registry.RegistryEvent  # noqa: B018 - the registry's events are twin.results'


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("twin.client", ("twin.serving", "twin.registry", "twin.historian")),
        ("twin.serving", ("twin.client", "twin.cli")),
        ("controller.models", ("twin.serving", "twin.registry")),
    ],
)
def test_who_imports_whom(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({absent!r})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"{module} imports {run.stdout.strip()}"
