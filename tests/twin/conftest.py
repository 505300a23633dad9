"""Fixtures of the twin's server tests: scenarios to predict, small saved models (from the shared
``random_surrogate`` factory) and a serving twin (from the shared ``twin_server`` factory)."""

from __future__ import annotations

import functools
import glob
import importlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, save_model
from identification.network import EnsembleWeights
from identification.rollout import make_rollout_engine
from identification.surrogate import Surrogate
from plant import sample_initial_states

NOMINAL_U = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])
"""(5,) consumption-level alumina feed, 140 kA, ACD 5 cm."""


def make_scenarios(b: int = 3, h: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x0`` (B, 8) initial states drawn from ``seed`` and ``u`` (B, H, 5): :data:`NOMINAL_U` with a noisy
    current."""
    rng = np.random.default_rng(seed)
    x0 = sample_initial_states(rng, b)
    u = np.broadcast_to(NOMINAL_U, (b, h, 5)).copy()
    u[:, :, 1] += rng.normal(0, 2000.0, (b, h))
    return x0, u


@pytest.fixture(scope="session")
def scenarios() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`make_scenarios`: ``x0, u = scenarios(b, h, seed)``."""
    return make_scenarios


@pytest.fixture(scope="session")
def rollout() -> Callable[[Surrogate, np.ndarray, np.ndarray], np.ndarray]:
    """``rollout(model, x0, u)``: what the server computes, in process: the same engine ("auto") on the same
    model, ``(M, B, H + 1, 8)``."""
    return lambda model, x0, u: make_rollout_engine(model).simulate(x0, u)


@pytest.fixture(scope="session")
def model_files() -> Callable[[Path], tuple[bytes, bytes]]:
    """``manifest_json, weights = model_files(directory)``: the bytes of a saved model's two files."""
    return lambda directory: ((directory / MANIFEST_NAME).read_bytes(), (directory / WEIGHTS_NAME).read_bytes())


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory: pytest.TempPathFactory, random_surrogate: Callable[..., Any]) -> dict[str, Any]:
    """Saved model directories and their surrogates, ``name -> (directory, Surrogate)``: two dense versions
    ``v1`` and ``v2``, an exactly sparse one and a diverging one (3 members, hidden (16, 16), normalisations
    fitted on tiny simulated sets)."""
    root = tmp_path_factory.mktemp("twin-models")
    small = {"m": 3, "hidden": (16, 16), "weight_std": 0.3, "bias_std": 0.05, "norm": "fitted"}
    dense1, dense2 = random_surrogate(1, **small), random_surrogate(2, **small)
    sparse = random_surrogate(3, density=0.3, coverage=True, **small)
    w = dense1.weights
    huge_bias = (*w.biases[:-1], np.full_like(w.biases[-1], 1e300))
    diverging = Surrogate(EnsembleWeights(w.architecture, w.weights, huge_bias), dense1.normalization)
    out = {}
    for name, model, kind in (
        ("v1", dense1, "dense"),
        ("v2", dense2, "dense"),
        ("sparse", sparse, "sparse"),
        ("diverging", diverging, "dense"),
    ):
        out[name] = (save_model(root / name, model, kind=kind, provenance={"seed": 7, "test": name}), model)
    return out


@pytest.fixture
def serving(twin_server: Callable[..., Any], twin_models: dict[str, Any]) -> tuple[Any, Any]:
    """A twin whose model "cell" has version 1 (``v1``) as champion, and a client with the management token."""
    server, client = twin_server()
    model, revision = client.register("cell", twin_models["v1"][0], set_alias="champion")
    assert (model.version, model.alias, revision) == (1, "champion", 2)
    return server, client


# -- a real PostgreSQL server for the PostgreSQL historian (Debian's postgresql package) --------------------------


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(
            f"PostgreSQL's {name} is not installed: the PostgreSQL historian's tests start a real server; "
            "install it with `apt-get install postgresql` (Debian/Ubuntu)"
        )
    return found


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server on a unix socket (trust auth, ``fsync=off``), for the whole session; yields
    the URL of its ``postgres`` database. As root, the server runs as ``nobody`` (initdb refuses root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="alutwin-pg-"))  # under /tmp: pytest's own tmp dirs are private to root
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data, log = root / "data", root / "server.log"
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True, timeout=60)
    try:
        run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"])
        options = f"-c fsync=off -c listen_addresses='' -k {root}"
        run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "30", "start"])
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {exc.stderr or exc.stdout}")
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of a fresh, empty database on :func:`postgres_server`, dropped after the test."""
    psycopg = importlib.import_module("psycopg")  # the optional extra [postgres]; an ImportError fails the test
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.replace("/postgres?", f"/{name}?")
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
