"""Shared fixtures: the spec's test vectors, a random surrogate factory, and servers on 127.0.0.1 port 0.

The factories are fixtures that return functions (``random_surrogate(seed, ...)``, ``twin_server(...)``,
``plant_server(...)``), so every package's tests build their models and servers the same way; servers started
through them are stopped without grace when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from identification.data import Normalization, fit_normalization, make_samples
from identification.network import Architecture, EnsembleWeights
from identification.surrogate import Surrogate
from plant import aprbs, sample_initial_states, simulate
from plant.client import PlantClient
from plant.config import PlantConfig
from plant.service import create_server as create_plant_server
from plant.signals import INPUTS, STATES
from twin.client import TwinClient
from twin.config import TwinConfig
from twin.serving import create_server as create_twin_server

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKEN = "test-token-0123456789abcdef"
"""The management token of the servers the fixtures start (at least 16 characters, as the twin demands)."""
WAIT = 10.0
"""Seconds a test's client waits for a call."""


@pytest.fixture(scope="session")
def plant_vectors() -> dict:
    """``shared/spec/plant_vectors.json``: the plant's reference values (tolerance: relative 1e-9)."""
    path = SHARED / "spec" / "plant_vectors.json"
    if not path.is_file():
        raise FileNotFoundError(f"the spec's test vectors are missing: {path}")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Waiting and failing calls


def _until(cond: Callable[[], bool], timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture(scope="session")
def until() -> Callable[..., bool]:
    """``until(cond, timeout=WAIT)``: poll ``cond()`` every 10 ms until it holds (True) or the time is up (its
    last value)."""
    return _until


def _rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.fixture(scope="session")
def rpc_error() -> Callable[[Callable[[], object]], tuple[grpc.StatusCode, str]]:
    """``code, details = rpc_error(call)``: the status of a call that must fail with :class:`grpc.RpcError`."""
    return _rpc_error


# ---------------------------------------------------------------------------------------------------------------
# Random surrogates


def _coverage_masks(rng: np.random.Generator, shapes, m: int, density: float) -> list[np.ndarray]:
    """Random masks in which every unit keeps at least one input and one output (no constant, no dead end)."""
    out = []
    for a, b in shapes:
        mk = rng.random((m, a, b)) < density
        members = np.arange(m)[:, None]
        mk[members, rng.integers(0, a, (m, b)), np.arange(b)[None, :]] = True  # an input for every unit
        mk[members, np.arange(a)[None, :], rng.integers(0, b, (m, a))] = True  # an output for every row
        out.append(mk)
    return out


def _fitted_normalization(seed: int):
    rng = np.random.default_rng(seed)
    data = simulate(sample_initial_states(rng, 4), aprbs(rng, 4, 200))
    return fit_normalization(make_samples(data), data.dt)


def make_random_surrogate(
    seed: int,
    m: int = 3,
    *,
    hidden: tuple[int, ...] = (20, 20, 20, 20),
    skip: bool = False,
    blocks: int = 1,
    density: float | None = None,
    coverage: bool = False,
    dead: bool = False,
    negative_zeros: bool = False,
    weight_std: float | None = None,
    scale: float | np.ndarray = 1.0,
    bias_std: float = 0.1,
    prior: str = "none",
    norm: str = "random",
    center_noise: float = 1.0,
    out_std: float = 0.1,
    out_scale: tuple[float, float] = (0.01, 1.0),
):
    """A random :class:`~identification.surrogate.Surrogate` ensemble of ``m`` members from ``seed``.

    Parameters
    ----------
    hidden, skip, blocks : the :class:`~identification.network.Architecture`.
    density : keep each weight with this probability (exact zeros elsewhere); ``coverage`` keeps at least one
        input and one output per unit; ``blocks > 1`` applies the architecture's structural masks first.
    dead : units 3 of layer 1 and 5 of layer 2 lose every input weight (constants the export and the kernels
        fold into the next layer; needs masks).
    negative_zeros : masked weights are signed zeros (the sign of the dropped weight), which must survive files.
    weight_std : standard deviation of layer weights over sqrt(fan-in); default He's sqrt(2). ``scale``
        multiplies it, per member when an array of ``m``.
    norm : ``"random"`` (a box around the signals' typical ranges: centre noise ``center_noise``, output mean
        ``N(0, out_std)``, output scale ``U(out_scale)``), ``"box"`` (the typical ranges exactly, output mean 0
        and scale 0.01) or ``"fitted"`` (fitted on a tiny simulated set drawn from ``seed``).
    """

    rng = np.random.default_rng(seed)
    arch = Architecture(hidden=hidden, skip=skip, blocks=blocks)
    per_member = np.broadcast_to(np.asarray(scale, dtype=float), (m,))[:, None, None]
    std = np.sqrt(2.0) if weight_std is None else weight_std
    ws = [per_member * rng.normal(0, std / np.sqrt(a), (m, a, b)) for a, b in arch.layer_shapes]
    bs = [rng.normal(0, bias_std, (m, b)) for _, b in arch.layer_shapes]
    masks = None
    if density is not None or blocks > 1:
        if coverage:
            masks = _coverage_masks(rng, arch.layer_shapes, m, 1.0 if density is None else density)
        else:
            struct = arch.structural_masks() or tuple(np.ones(s, dtype=bool) for s in arch.layer_shapes)
            masks = [np.broadcast_to(st, w.shape).copy() for st, w in zip(struct, ws, strict=True)]
            if density is not None:
                masks = [mk & (rng.random(mk.shape) < density) for mk in masks]
        if dead:
            masks[1][:, :, 3] = False
            bs[1][:, 3] = 0.7  # relu(0.7) feeds layer 2 as a constant
            masks[2][:, :, 5] = False
            bs[2][:, 5] = -0.2  # relu(-0.2) = 0
        zero = (lambda w: np.where(w < 0, -0.0, 0.0)) if negative_zeros else (lambda w: 0.0)
        ws = [np.where(mk, w, zero(w)) for w, mk in zip(ws, masks, strict=True)]
    low = np.array([s.low for s in (*STATES, *INPUTS)])
    high = np.array([s.high for s in (*STATES, *INPUTS)])
    if norm == "fitted":
        normalization = _fitted_normalization(seed)
    elif norm == "box":
        normalization = Normalization((low + high) / 2, (high - low) / 4, np.zeros(8), np.full(8, 0.01), 10.0)
    elif norm == "random":
        normalization = Normalization(
            (low + high) / 2 + rng.normal(0, center_noise, 13),
            (high - low) / 4,
            rng.normal(0, out_std, 8),
            rng.uniform(*out_scale, 8),
            10.0,
        )
    else:
        raise ValueError(f"norm must be 'random', 'box' or 'fitted', got {norm!r}")
    weights = EnsembleWeights(arch, tuple(ws), tuple(bs), None if masks is None else tuple(masks))
    return Surrogate(weights, normalization, prior)


@pytest.fixture(scope="session")
def random_surrogate() -> Callable[..., Any]:
    """:func:`make_random_surrogate`: ``random_surrogate(seed, m, hidden=..., density=..., ...)``."""
    return make_random_surrogate


# ---------------------------------------------------------------------------------------------------------------
# Servers on 127.0.0.1, port 0


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``cert, key``: PEM files of a self-signed certificate for ``localhost`` and ``127.0.0.1`` (valid one day)
    and its key, made by the ``openssl`` command (a test that needs them is skipped where it is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _scrape_metrics(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


@pytest.fixture(scope="session")
def scrape_metrics() -> Callable[[int], dict[tuple[str, frozenset], float]]:
    """``scrape_metrics(port)``: every sample of ``http://127.0.0.1:<port>/metrics`` (Prometheus text format), by
    name and label set: ``{(name, frozenset(labels.items())): value}``."""
    return _scrape_metrics


@contextlib.contextmanager
def running_twin(store: Path, *, token: str | None = TOKEN, **settings: Any) -> Iterator[tuple[Any, Any]]:
    """A twin on 127.0.0.1 over ``store`` (port 0 and no grace on stop unless given) and a client with ``token``."""
    cfg = TwinConfig(store=store, token=token, **{"port": 0, "grace_s": 0.0, **settings})
    server, port = create_twin_server(cfg)
    assert port > 0 and server.address == f"127.0.0.1:{port}" and cfg.port in (0, port)
    server.start()
    client = TwinClient(server.address, token=token, timeout=WAIT)
    try:
        yield server, client
    finally:
        client.close()
        server.stop(0)


@contextlib.contextmanager
def running_plant(potline: Any = None, **settings: Any) -> Iterator[tuple[Any, Any]]:
    """A plant service on 127.0.0.1 port 0 (3 cells, seed 5, no grace unless given) and a client."""
    cfg = PlantConfig(**{"n_cells": 3, "seed": 5, "port": 0, "grace_s": 0.0, **settings})
    server, port = create_plant_server(cfg, potline=potline)
    assert port > 0 and server.address == f"127.0.0.1:{port}"
    server.start()
    client = PlantClient(server.address, timeout=WAIT)
    try:
        yield server, client
    finally:
        client.close()
        server.stop(0)


@pytest.fixture(scope="session")
def start_twin() -> Callable[..., Any]:
    """:func:`running_twin`, for fixtures of any scope: ``with start_twin(store) as (server, client): ...``."""
    return running_twin


@pytest.fixture(scope="session")
def start_plant() -> Callable[..., Any]:
    """:func:`running_plant`, for fixtures of any scope: ``with start_plant(**settings) as (server, client)``."""
    return running_plant


@pytest.fixture
def twin_server(tmp_path: Path) -> Iterator[Callable[..., tuple[Any, Any]]]:
    """Start twins on fresh stores under ``tmp_path`` with a client each, all stopped when the test ends:
    ``server, client = twin_server(store=None, token=TOKEN, **TwinConfig settings)``."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(*, store: Path | None = None, **settings: Any) -> tuple[Any, Any]:
            nonlocal count
            count += 1
            return stack.enter_context(running_twin(store or tmp_path / f"store{count - 1}", **settings))

        yield make


@pytest.fixture
def plant_server() -> Iterator[Callable[..., tuple[Any, Any]]]:
    """Start plant services with a client each, all stopped when the test ends:
    ``server, client = plant_server(potline=None, **PlantConfig settings)``."""
    with contextlib.ExitStack() as stack:
        yield lambda potline=None, **settings: stack.enter_context(running_plant(potline, **settings))
