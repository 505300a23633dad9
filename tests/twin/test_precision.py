"""Predict's compute precision over gRPC, against a twin on 127.0.0.1 serving the committed sparse model:
FLOAT32 is honoured (the network layers in float32: close to FLOAT64, not equal to it), UNSPECIFIED is
FLOAT64, and a value the contract does not define is INVALID_ARGUMENT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from alutwin.v1 import twin_pb2
from identification.modelfile import load_model
from identification.rollout import make_rollout_engine
from twin.registry.served import NOMINAL_INPUT, NOMINAL_STATE
from twin.serving.prediction import compute_precision

PRETRAINED = Path(__file__).resolve().parents[2] / "identification" / "pretrained" / "sparse-inputskip"
F32_VS_F64_RTOL = 1e-6  # the mean states, float32 vs float64 layers, 120 steps (measured 6e-9 over 360)


@pytest.fixture
def served(twin_server: Any) -> tuple[Any, Any]:
    server, client = twin_server()
    client.register("cell", PRETRAINED, set_alias="champion")
    return server, client


def _nominal(b: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x0 = NOMINAL_STATE * (1 + rng.normal(0, 0.002, (b, 8)))
    u = np.broadcast_to(NOMINAL_INPUT, (b, h, 5)).copy()
    u[:, :, 1] += rng.normal(0, 500.0, (b, h))
    return x0, u


@pytest.mark.parametrize("b", [1, 5])  # member quads in float64 for one cell; the C summary for five
def test_float32_compute_is_honoured_and_close_to_float64(served: tuple[Any, Any], b: int) -> None:
    _, client = served
    x0, u = _nominal(b, 120)
    f64 = client.predict("cell", x0, u, include_members=True)
    f32 = client.predict("cell", x0, u, include_members=True, compute="float32")
    assert f64.mean is not None and f32.mean is not None and f32.members is not None
    assert not np.array_equal(f32.mean, f64.mean)  # honoured: not the float64 rollout
    np.testing.assert_allclose(f32.mean, f64.mean, rtol=F32_VS_F64_RTOL, atol=0)
    np.testing.assert_allclose(f32.members, f64.members, rtol=F32_VS_F64_RTOL, atol=0)
    for name, arr in f64.outputs.items():
        np.testing.assert_allclose(f32.outputs[name], arr, rtol=1e-5, atol=1e-6, err_msg=name)
    assert f32.validity == f64.validity
    # what the twin computes is the same engine's float32 rollout, bit for bit (the same code run twice)
    ref = make_rollout_engine(load_model(PRETRAINED).surrogate).simulate(x0, u, precision="float32")
    np.testing.assert_array_equal(f32.members, ref)


def test_a_precision_the_contract_does_not_define_is_invalid_argument(served: tuple[Any, Any]) -> None:
    _, client = served
    x0, u = _nominal(2, 5)
    request = client.predict_request("cell", x0, u)
    request.precision = 7  # type: ignore[assignment]  # an open enum: any int32 travels
    unspecified = client.predict_request("cell", x0, u)
    unspecified.ClearField("precision")
    with grpc.insecure_channel(client.address) as channel:
        call = channel.unary_unary("/alutwin.v1.PredictionService/Predict")
        assert call(unspecified.SerializeToString(), timeout=30)  # UNSPECIFIED is served (float64)
        with pytest.raises(grpc.RpcError) as info:
            call(request.SerializeToString(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "precision = 7 is not a ComputePrecision" in info.value.details()
    assert "COMPUTE_PRECISION_FLOAT32" in info.value.details()


def test_compute_precision_maps_the_enum() -> None:
    assert compute_precision(twin_pb2.COMPUTE_PRECISION_UNSPECIFIED) == "float64"
    assert compute_precision(twin_pb2.COMPUTE_PRECISION_FLOAT64) == "float64"
    assert compute_precision(twin_pb2.COMPUTE_PRECISION_FLOAT32) == "float32"
