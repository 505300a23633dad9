"""``alutwin control --twin ADDR --plant ADDR``: the NMPC against a twin and a plant started as separate processes
on 127.0.0.1 ports (``alutwin twin serve``, ``alutwin plant serve``): a stepped plant the loop steps, a real-time
plant over TLS with a token whose clock it follows, and the clear errors of a twin that lacks a model, of a cell
the plant does not have, of a missing token and of remote flags that do not fit together."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from apps.control import control
from apps.control import main as control_main
from apps.runner import Remote, SystemConfig
from controller.closed_loop import DEFAULT_MODELS, Scenario
from controller.config import MPCConfig, SafetyConfig
from plant.client import PlantClient
from plant.config import PlantConfig
from plant.potline import Potline

TOKEN = "test-token-0123456789abcdef"
PLANT_TOKEN = "plant-token-0123456789abcdef"
ALUTWIN = [sys.executable, "-c", "import sys; from alutwin.cli import main; sys.exit(main())"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "ALUTWIN_TWIN_TOKEN": TOKEN, "ALUTWIN_PLANT_TOKEN": PLANT_TOKEN}
PLANT_SEED, PLANT_CELLS = 3, 2
# A short run: 1-minute intervals over 0.1 h (6 solves of a 3-interval horizon, no C compile of the NLP).
RUN = ["--hours", "0.1", "--interval-min", "1", "--horizon-h", "0.05", "--no-jit", "--quiet"]
STEPS = 36


@contextlib.contextmanager
def _serving(folder: Path, commands: dict[str, list[str]]) -> Iterator[dict[str, str]]:
    """Start ``alutwin <command>`` for each entry as its own process; yield the address each serves on (read
    from its first line); stop them all (SIGTERM) on exit."""
    started: list[tuple[subprocess.Popen[str], IO[str]]] = []
    addresses = {}
    try:
        for name, cmd in commands.items():
            err = (folder / f"{name}.stderr").open("w")  # a file, not a pipe that nobody drains
            proc = subprocess.Popen(
                [*ALUTWIN, *cmd], stdout=subprocess.PIPE, stderr=err, text=True, cwd=folder, env=ENV
            )
            started.append((proc, err))
            line = proc.stdout.readline() if proc.stdout is not None else ""
            assert " on 127.0.0.1:" in line, f"{name} did not start: {line}{(folder / f'{name}.stderr').read_text()}"
            addresses[name] = line.split(" on ")[1].split()[0]
        yield addresses
    finally:
        for proc, err in started:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            err.close()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A twin (management token from $ALUTWIN_TWIN_TOKEN) serving the committed sparse model as cell-sparse, and
    a stepped plant of 2 cells, each its own process."""
    folder = tmp_path_factory.mktemp("remote")
    (folder / "twin.yaml").write_text(
        "store: store\nport: 0\ngrace_s: 0\nengine: numpy\ntoken_env: ALUTWIN_TWIN_TOKEN\n"
    )
    plant = ["plant", "serve", "--port", "0", "--cells", str(PLANT_CELLS), "--seed", str(PLANT_SEED)]
    with _serving(folder, {"twin": ["twin", "serve", "--config", "twin.yaml"], "plant": plant}) as addresses:
        register = [
            *ALUTWIN,
            *("twin", "register", "--address", addresses["twin"], "--name", "cell-sparse"),
            *("--model", str(DEFAULT_MODELS / "sparse-inputskip"), "--alias", "champion"),
        ]
        run = subprocess.run(register, capture_output=True, text=True, cwd=folder, env=ENV, timeout=120)
        assert run.returncode == 0 and "registered cell-sparse version 1" in run.stdout, run.stderr
        yield addresses


@pytest.fixture(scope="module")
def realtime(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]) -> Iterator[dict[str, str]]:
    """A real-time plant (360 plant seconds per second) serving TLS, its commands behind the token in
    $ALUTWIN_PLANT_TOKEN; ``address`` and ``ca`` (the PEM file to trust)."""
    folder = tmp_path_factory.mktemp("realtime")
    cert, key = tls_files
    (folder / "plant.yaml").write_text(
        "n_cells: 2\nseed: 5\nport: 0\nreal_time_factor: 360\ngrace_s: 0\ntoken_env: ALUTWIN_PLANT_TOKEN\n"
        f"tls_cert: {cert}\ntls_key: {key}\n"
    )
    with _serving(folder, {"plant": ["plant", "serve", "--config", "plant.yaml"]}) as addresses:
        yield {"address": addresses["plant"], "ca": str(cert)}


def test_control_runs_the_nmpc_against_a_remote_twin_and_a_stepped_remote_plant(services, tmp_path):
    with PlantClient(services["plant"]) as plant:
        start = plant.info().step
    cmd = [
        *("control", "--twin", services["twin"], "--plant", services["plant"]),
        *("--controllers", "baseline,sparse", "--cells", "1,0", "--out", str(tmp_path / "report"), *RUN),
    ]
    run = subprocess.run([*ALUTWIN, *cmd], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"report in {tmp_path / 'report'}" in run.stdout
    assert {"report.md", "report.json", "trajectories_seed0.png"} <= {p.name for p in (tmp_path / "report").iterdir()}
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    s = doc["settings"]
    assert s["plant"] == {
        "address": services["plant"],
        "tls": False,
        "token": True,  # $ALUTWIN_PLANT_TOKEN is set; a plant without a token ignores it
        "cells": {"baseline": 1, "sparse": 0},
        "start_step": start,
    }
    assert s["twin"] == {"address": services["twin"], "tls": False, "token": True, "models": {"sparse": "cell-sparse"}}
    assert s["models_dir"] is None
    by = {r["controller"]: r for r in doc["results"]}
    assert set(by) == {"baseline", "sparse"}
    for r in by.values():
        assert r["steps"] == STEPS and not r["fault"]
        assert math.isfinite(r["kwh_per_kg"]) and r["kwh_per_kg"] > 0
        assert all(math.isfinite(w["pct_time_inside"]) for w in r["windows"].values())
    assert by["baseline"]["modes"] == {"auto": 6}
    assert sum(by["sparse"]["modes"].values()) == 6 and by["sparse"]["solves"] >= 1
    assert by["sparse"]["model"]["kind"] == "sparse-inputskip" and by["sparse"]["model"]["version"] == 1
    # The loop stepped the plant once per step for both cells together, and handed the cells back.
    replay = Potline.from_config(PlantConfig(n_cells=PLANT_CELLS, seed=PLANT_SEED, port=0))
    replay.step(start + STEPS)  # the same plant, left to the cells' own controllers throughout
    with PlantClient(services["plant"]) as plant:
        assert plant.info().step == start + STEPS
        baseline, sparse = plant.state(1, include_true=True), plant.state(0, include_true=True)
    assert all(v is None for v in sparse.manual.values())
    # the same code on the same machine: the baseline's cell is exactly the replay's, the NMPC's cell is not
    np.testing.assert_array_equal(baseline.x_true, replay.states[1])
    assert np.max(np.abs(sparse.x_true - replay.states[0]) / np.maximum(np.abs(replay.states[0]), 1.0)) > 1e-6


def test_control_follows_a_real_time_plant_over_tls_with_its_token(services, realtime, tmp_path):
    ca = Path(realtime["ca"]).read_bytes()
    config = SystemConfig(
        scenarios=(Scenario(hours=0.05, seed=0),),
        controllers=("sparse", "baseline"),
        mpc=MPCConfig(interval_steps=6, horizon=3, jit=False),
        safety=SafetyConfig(watchdog_s=0.0),
        progress=False,
        twin=Remote(services["twin"]),
        plant=Remote(realtime["address"], token=PLANT_TOKEN, root_certificates=ca),
        cells=(0, 1),
    )
    doc = control(config, tmp_path / "report")
    s = doc["settings"]["plant"]
    assert s["address"] == realtime["address"] and s["tls"] and s["token"]
    assert s["cells"] == {"sparse": 0, "baseline": 1}
    assert "missed_steps" not in s  # every step of the plant's clock was recorded
    by = {r["controller"]: r for r in doc["results"]}
    for r in by.values():
        assert r["steps"] == 18 and not r["fault"] and math.isfinite(r["kwh_per_kg"])
    assert sum(by["sparse"]["modes"].values()) == 3 and by["sparse"]["solves"] >= 1
    with PlantClient(realtime["address"], root_certificates=ca) as plant:
        assert plant.info().step >= s["start_step"] + 18  # its own clock ran on
        assert all(v is None for v in plant.state(0).manual.values())  # handed back


def test_a_plant_with_a_token_refuses_the_controller_without_it(realtime, tmp_path, capsys):
    unset = "ALUTWIN_TEST_NO_SUCH_VARIABLE"
    argv = ["--plant", realtime["address"], "--plant-tls-ca", realtime["ca"], "--plant-token-env", unset]
    assert control_main([*argv, "--controllers", "baseline", *RUN, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()  # TLS worked (the CA file was read); the command was refused
    assert err.startswith(f"alutwin control: error: ServiceError: the plant at {realtime['address']}: UNAUTHENTICATED")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["--twin", "{twin}", "--controllers", "sparse,dense", "--cells", "0,1"],
            2,
            "does not serve cell-dense@champion (controller 'dense'); register it (alutwin twin register --name "
            "cell-dense --model DIR --alias champion)",
        ),
        (["--controllers", "baseline", "--cells", "5"], 2, "cell 5 of cells [5] is out of range: the plant at"),
        (["--controllers", "baseline,oracle", "--cells", "1"], 2, "--cells names 1 cell for 2 controllers"),
        (["--controllers", "baseline", "--seeds", "1,2"], 2, "--seeds is for a plant started here; with --plant"),
    ],
)
def test_remote_mistakes_are_one_clear_line(services, tmp_path, capsys, argv, code, message):
    argv = [a.format(twin=services["twin"]) for a in argv]
    full = ["--plant", services["plant"], *argv, "--out", str(tmp_path / "out"), *RUN]
    with PlantClient(services["plant"]) as plant:
        start = plant.info().step
    assert control_main(full) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("alutwin control: error: ") and message in err and "\n" not in err
    with PlantClient(services["plant"]) as plant:
        assert plant.info().step == start  # refused before any step


def test_an_unreachable_twin_is_a_one_line_runtime_error(tmp_path, capsys):
    argv = ["--twin", "127.0.0.1:1", "--controllers", "sparse", "--out", str(tmp_path / "out"), *RUN]
    assert control_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("alutwin control: error: ServiceError: the twin at 127.0.0.1:1: UNAVAILABLE")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--twin", "localhost"], "--twin: address must be 'host:port'"),
        (["--plant-tls-ca", "ca.pem"], "--plant-tls-ca needs --plant"),
        (["--cells", "1"], "--cells 1 names cells of a remote plant: it needs --plant"),
        (["--plant", "127.0.0.1:9", "--controllers", "oracle", "--in-process"], "--in-process is for a plant"),
    ],
)
def test_remote_flags_are_checked_before_anything_starts(tmp_path, capsys, argv, message):
    assert control_main([*argv, "--out", str(tmp_path / "out"), *RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alutwin control: error: ") and message in err
