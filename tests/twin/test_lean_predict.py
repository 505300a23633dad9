"""Lean Predict responses (field mask, stride) and validity flags (valid domain, training envelope, diverged
members), over gRPC against a twin on 127.0.0.1 serving the committed sparse model (which holds its training
envelope)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from plant.domain import Fault, check_domain
from plant.signals import U, X
from twin.registry.served import NOMINAL_INPUT, NOMINAL_STATE

PRETRAINED = Path(__file__).resolve().parents[2] / "identification" / "pretrained" / "sparse-inputskip"


@pytest.fixture
def lean(twin_server: Any) -> tuple[Any, Any]:
    """A twin serving the committed sparse model as ``cell``'s champion, and its client."""
    server, client = twin_server()
    client.register("cell", PRETRAINED, set_alias="champion")
    return server, client


def _nominal(b: int = 4, h: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``b`` states near the nominal operating point under nominal inputs with a little current noise."""
    rng = np.random.default_rng(seed)
    x0 = NOMINAL_STATE * (1 + rng.normal(0, 0.002, (b, 8)))
    u = np.broadcast_to(NOMINAL_INPUT, (b, h, 5)).copy()
    u[:, :, U.CURRENT] += rng.normal(0, 500.0, (b, h))
    return x0, u


def test_field_mask_and_stride_return_exactly_the_slices_of_the_full_response(lean: tuple[Any, Any]) -> None:
    _, client = lean
    x0, u = _nominal(3, 61)
    full = client.predict("cell", x0, u, include_members=True)
    for k in (1, 6, 7, 61, 100):
        part = client.predict("cell", x0, u, fields=("mean", "outputs"), stride=k)
        assert part.stride == k and part.spread is None and part.members is None
        assert np.array_equal(part.require_mean(), full.require_mean()[:, ::k])
        assert part.outputs.keys() == full.outputs.keys()
        for name, arr in full.outputs.items():
            assert np.array_equal(part.outputs[name], arr[:, ::k])
    only = client.predict("cell", x0, u, fields=("spread", "members"), stride=6)
    assert only.mean is None and only.outputs == {}
    assert full.spread is not None and full.members is not None and only.members is not None
    assert np.array_equal(only.spread, full.spread[:, ::6]) and np.array_equal(only.members, full.members[:, :, ::6])
    f32 = client.predict("cell", x0, u, fields=("mean",), stride=6, precision="float32")
    f32_full = client.predict("cell", x0, u, precision="float32")
    assert np.array_equal(f32.require_mean(), f32_full.require_mean()[:, ::6])
    # the validity does not depend on what is returned: it is checked at every rollout step
    assert part.validity == full.validity == only.validity


def test_a_bad_field_mask_or_compute_precision_is_invalid_argument(lean: tuple[Any, Any]) -> None:
    _, client = lean
    x0, u = _nominal(1, 5)
    with pytest.raises(grpc.RpcError) as info:
        client.predict("cell", x0, u, fields=("mean", "trajectories"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field_mask path 'trajectories'" in info.value.details()
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        client.predict("cell", x0, u, stride=0)


def test_the_response_size_limit_counts_only_the_fields_and_steps_returned(twin_server: Any) -> None:
    _, client = twin_server(max_message_bytes=3 << 20, max_upload_bytes=1 << 20)
    client.register("cell", PRETRAINED, set_alias="champion")
    x0, u = _nominal(60, 1200)  # full response: 60 * 1201 * (8 + 8 + 4) * 8 B = 11.5 MB > 3 MiB
    with pytest.raises(grpc.RpcError) as info:
        client.predict("cell", x0, u)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "a larger stride" in info.value.details()
    lean = client.predict("cell", x0, u, fields=("mean", "outputs"), stride=6, precision="float32")
    assert lean.require_mean().shape == (60, 201, 8)
    info_ = client.serving_info()
    assert info_.response_bytes(60, 1200, 10, 4, frozenset({"mean", "outputs"}), 6, 4) < 3 << 20


def test_serving_info_lists_each_served_version_with_its_ensemble_size(lean: tuple[Any, Any], twin_models) -> None:
    _, client = lean
    client.register("other", twin_models["v1"][0], set_alias="champion")
    client.set_alias("other", "staging", 1)
    info = client.serving_info()
    by_name = {v.name: v for v in info.served_versions}
    assert by_name["cell"].n_members == 10 and by_name["cell"].kind == "sparse-inputskip"
    assert by_name["cell"].has_envelope and by_name["cell"].aliases == ("champion",)
    assert by_name["other"].aliases == ("champion", "staging") and by_name["other"].n_members == 3
    assert not by_name["other"].has_envelope
    assert info.response_overhead_bytes > 0 and info.max_envelope_excess == 0.0


def _brute_force(pred: Any) -> list[tuple[int, tuple[int, ...], int]]:
    """Per scenario, from the full mean and every member (the oracle): the first step the mean leaves the
    domain, the members that leave it, and the first step one does."""
    out = []
    for b in range(pred.mean.shape[0]):
        mean_codes = check_domain(pred.mean[b])
        first_mean = int(np.argmax(mean_codes != 0)) if (mean_codes != 0).any() else -1
        member_bad = check_domain(pred.members[:, b]) != 0  # (M, H + 1)
        diverged = tuple(int(m) for m in np.flatnonzero(member_bad.any(1)))
        first = min((int(np.argmax(member_bad[m])) for m in diverged), default=-1)
        out.append((first_mean, diverged, first))
    return out


def test_validity_is_clean_on_the_nominal_case(lean: tuple[Any, Any]) -> None:
    _, client = lean
    x0, u = _nominal(4, 360)
    pred = client.predict("cell", x0, u, include_members=True)
    assert pred.envelope_known and len(pred.validity) == 4
    assert all(v.ok for v in pred.validity), pred.validity
    assert pred.input_warnings == ()
    assert _brute_force(pred) == [(-1, (), -1)] * 4


def test_validity_flags_a_cell_starved_of_alumina_and_agrees_with_the_members(lean: tuple[Any, Any]) -> None:
    _, client = lean
    x0, u = _nominal(3, 2500)
    u[1, :, U.FEED_AL2O3] = 0.0  # scenario 1: no alumina fed for 7 h
    pred = client.predict("cell", x0, u, include_members=True)
    lean_pred = client.predict("cell", x0, u, fields=("mean",), stride=50)  # no members: the bound path
    assert lean_pred.validity == pred.validity
    v = pred.validity[1]
    codes = check_domain(pred.mean[1])  # the oracle: the plant's guard on the full mean
    assert v.domain_exit_step > 0 and (codes[: v.domain_exit_step] == 0).all() and codes[v.domain_exit_step] != 0
    assert v.domain_reason == Fault(int(codes[v.domain_exit_step])).describe()  # starved: the ledge melts
    assert v.diverged_members and 0 <= v.first_divergence_step <= v.domain_exit_step
    assert [(w.domain_exit_step, w.diverged_members, w.first_divergence_step) for w in pred.validity] == _brute_force(
        pred
    )
    assert pred.validity[0].ok and pred.validity[2].ok


def test_inputs_outside_the_training_envelope_are_warned_about_and_refused_beyond_the_limit(
    lean: tuple[Any, Any], twin_server: Any
) -> None:
    _, client = lean
    x0, u = _nominal(2, 30)
    x0[1, X.M_LEDGE] = -10_000.0  # far outside the training envelope and the valid domain
    u[0, 7, U.CURRENT] = 250_000.0
    pred = client.predict("cell", x0, u)
    warned = {(w.array, w.signal): w for w in pred.input_warnings}
    assert set(warned) == {("x0", "m_ledge"), ("u", "current")}
    ledge = warned[("x0", "m_ledge")]
    assert (ledge.scenario, ledge.count, ledge.worst_value) == (1, 1, -10_000.0)
    assert ledge.excess == pytest.approx((ledge.low + 10_000.0) / (ledge.high - ledge.low))
    cur = warned[("u", "current")]
    assert (cur.scenario, cur.step, cur.count, cur.worst_value) == (0, 7, 1, 250_000.0)
    v = pred.validity[1]
    assert v.domain_exit_step == 0 and "ledge" in v.domain_reason
    assert v.envelope_exit_step == 0 and "m_ledge" in v.envelope_signals
    _, strict = twin_server(max_envelope_excess=1.0)
    strict.register("cell", PRETRAINED, set_alias="champion")
    with pytest.raises(grpc.RpcError) as info:
        strict.predict("cell", x0, u)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "envelope widths outside the model's training range" in info.value.details()
    strict.predict("cell", *_nominal(2, 30))  # inside: served


def test_a_model_without_envelope_says_so(serving: tuple[Any, Any]) -> None:
    _, client = serving  # "cell" v1: a random test model saved without envelope
    x0, u = _nominal(2, 10)
    pred = client.predict("cell", x0, u)
    assert not pred.envelope_known and pred.input_warnings == ()
    assert all(v.envelope_exit_step == -1 for v in pred.validity)
