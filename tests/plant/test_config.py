"""The potline's settings (plant.config.PlantConfig): defaults, every bound and cross-field rule refused with its
key named, several mistakes at once, YAML files, ``dataclasses.replace`` validating again, the example file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alutwin.config import ConfigError
from plant.config import COMMANDS, CURRENT_PROFILES, PlantConfig
from plant.potline import Potline
from plant.scenarios import ScenarioEvent
from plant.signals import X
from plant.simulator import DT

REPO = Path(__file__).resolve().parents[2]
BASE = {"n_cells": 3, "seed": 1, "port": 0}


def test_defaults():
    cfg = PlantConfig(**BASE)
    assert cfg.dt == DT and cfg.stepped and cfg.host == "127.0.0.1" and cfg.scenario == () and cfg.noise_std is None
    assert cfg.limits.min_ledge_mass == cfg.min_ledge_mass
    assert [f.name for f in dataclasses.fields(PlantConfig) if f.default is dataclasses.MISSING] == list(BASE)
    assert cfg.current_profile in CURRENT_PROFILES and {c.field for c in COMMANDS} == {
        "alumina_feed",
        "alf3_feed",
        "acd",
    }


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("n_cells", 0, "n_cells: must be >= 1, got 0"),
        ("n_cells", 2.0, "n_cells: must be an integer, got 2.0"),
        ("seed", -1, "seed: must be >= 0, got -1"),
        ("seed", True, "seed: must be an integer, got True"),
        ("port", 65536, "port: must be <= 65535, got 65536"),
        ("dt", 0, "dt: must be > 0, got 0"),
        ("dt", [1], "dt: must be a number, got [1]"),
        ("real_time_factor", -1, "real_time_factor: must be >= 0, got -1"),
        ("current_profile", "sine", "current_profile: must be one of 'constant' or 'aprbs', got 'sine'"),
        ("line_current", float("nan"), "line_current: must be a finite number, got nan"),
        ("acd", 0.07, "acd: must be <= 0.06, got 0.07"),
        ("acd", 0.039, "acd: must be >= 0.04, got 0.039"),
        ("noise_std", [1, 2], "noise_std: must have at least 8 items, got [1, 2]"),
        ("noise_std", [0, 0, 0, 0, 0, -2, 0, 0], "noise_std[5]: must be >= 0, got -2"),
        ("noise_std", "2.0", "noise_std: must be a list, got '2.0'"),
        ("min_ledge_mass", -5, "min_ledge_mass: must be >= 0, got -5"),
        ("host", "", "host: must not be empty"),
        ("max_workers", 0, "max_workers: must be >= 1, got 0"),
        ("max_streams", 0, "max_streams: must be >= 1, got 0"),
        ("max_streams", 16, "max_streams (16) must be less than max_workers (16)"),
        ("stream_queue_size", 0, "stream_queue_size: must be >= 1, got 0"),
        ("max_steps_per_call", 0, "max_steps_per_call: must be >= 1, got 0"),
        ("grace_s", -1, "grace_s: must be >= 0, got -1"),
        (
            "scenario",
            [{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 2, "cells": [3]}],
            "scenario[0].cells: [3] do not exist",
        ),
    ],
)
def test_each_bound_is_refused_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        PlantConfig(**{**BASE, key: value})
    assert str(err.value).startswith(f"PlantConfig: {words}") or f"; {words}" in str(err.value), str(err.value)
    assert key in str(err.value)


def test_bounds_accept_their_edges():
    cfg = PlantConfig(
        n_cells=1, seed=0, port=65535, acd=0.04, real_time_factor=0, max_streams=15, grace_s=0, min_ledge_mass=0
    )
    assert cfg.port == 65535 and cfg.acd == 0.04
    assert PlantConfig(**BASE, acd=0.06, noise_std=[0] * 8).noise_std == (0.0,) * 8


def test_replace_validates_again():
    cfg = PlantConfig(**BASE)
    with pytest.raises(ConfigError, match=r"^PlantConfig: port: must be <= 65535, got 70000$"):
        dataclasses.replace(cfg, port=70000)
    with pytest.raises(ConfigError, match="scenario"):
        dataclasses.replace(
            cfg, n_cells=1, scenario=[{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 2, "cells": [2]}]
        )
    assert dataclasses.replace(cfg, n_cells=5).n_cells == 5


def test_from_yaml(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text(
        "n_cells: 3\nseed: 2\nport: 0\nnoise_std: [0, 0, 0, 0, 0, 2.5, 0, 0]\nreal_time_factor: 360\n"
        "scenario:\n  - {kind: offset_sensor, at_s: 60, state: T_bath, offset: 1.5, cells: [2]}\n"
    )
    cfg = PlantConfig.from_yaml(path)
    assert cfg.n_cells == 3 and cfg.noise_std == (0, 0, 0, 0, 0, 2.5, 0, 0) and not cfg.stepped
    assert cfg.scenario == (ScenarioEvent("offset_sensor", 60.0, (2,), state="T_bath", offset=1.5),)
    assert Potline.from_config(cfg).noise.std[X.T_BATH] == 2.5
    path.write_text("n_cells: 1\nseed: 0\nport: 0\nscenario:\n")  # every event commented out
    assert PlantConfig.from_yaml(path).scenario == ()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("n_cells: 3\nseed: 1\nport: 0\ncels: 4\n", "unknown key 'cels' (did you mean 'n_cells'?)"),
        ("n_cells: 3\nport: 0\n", "missing required key 'seed'"),
        ("n_cells: three\nseed: 1\nport: 0\n", "n_cells: must be an integer, got 'three'"),
        ("- 1\n- 2\n", "expected a mapping of settings, got list"),
        ("n_cells: [\n", "not valid YAML at line 2"),
        ("n_cells: 3\nn_cells: 4\nseed: 1\nport: 0\n", "key 'n_cells' is given twice"),
    ],
)
def test_yaml_errors_are_one_line_naming_file_and_key(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        PlantConfig.from_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value) and "\n" not in str(err.value)


def test_several_mistakes_are_reported_at_once(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text(
        "n_cells: 0\nseed: 1\nport: 0\nacd: 0.1\nprofile: aprbs\n"
        "scenario:\n  - {kind: drift, at_s: 0, parameter: k3, factor: -1}\n"
    )
    with pytest.raises(ConfigError) as err:
        PlantConfig.from_yaml(path)
    assert err.value.problems == (
        "n_cells: must be >= 1, got 0",
        "acd: must be <= 0.06, got 0.1",
        "scenario[0].factor: must be > 0, got -1",
        "unknown key 'profile' (did you mean 'current_profile'?)",
    )


def test_example_deploy_config_loads():
    cfg = PlantConfig.from_yaml(REPO / "deploy" / "plant.yaml")
    assert cfg.n_cells == 4 and cfg.host == "127.0.0.1" and cfg.current_profile == "aprbs"
    assert cfg.noise_std is not None and cfg.noise_std[X.T_BATH] == 2.0
    Potline.from_config(cfg).step(2)
