"""The controller's settings (controller.config: MPCConfig, SafetyConfig and the file of both, ControllerConfig):
defaults, every bound refused with its key named, several mistakes at once, YAML, ``dataclasses.replace``
validating again, and the example deploy/mpc.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alutwin.config import ConfigError
from controller.config import HESSIANS, ControllerConfig, MPCConfig, SafetyConfig
from controller.problem import ACD_RATE, WINDOWS, CostWeights

REPO = Path(__file__).resolve().parents[2]


def test_defaults():
    mpc = MPCConfig()
    assert mpc.weights == CostWeights() and mpc.hessian in HESSIANS and mpc.acd_rate == ACD_RATE
    assert len(mpc.violation_factors) == len(mpc.backoffs_high) == len(WINDOWS)
    assert ControllerConfig() == ControllerConfig(mpc=MPCConfig(), safety=SafetyConfig())
    assert MPCConfig(violation_factor=3, backoff_high=None).violation_factors == (3.0,) * 4
    assert MPCConfig(backoff_high=None).backoffs_high == mpc.backoff


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"interval_steps": 0}, "interval_steps: must be >= 1, got 0"),
        ({"interval_steps": 10_001}, "interval_steps: must be <= 10000, got 10001"),
        ({"horizon": 1001}, "horizon: must be <= 1000, got 1001"),
        ({"horizon": 2.0}, "horizon: must be an integer, got 2.0"),
        ({"weights": {"energy": -1}}, "weights.energy: must be >= 0, got -1"),
        ({"weights": {"energy": float("inf")}}, "weights.energy: must be a finite number, got inf"),
        ({"weights": {"energy": "2"}}, "weights.energy: must be a number, got '2'"),
        ({"weights": {"move": [1, True, 2]}}, "weights.move[1]: must be a number, got True"),
        ({"weights": {"move": [1, 2]}}, "weights.move: must have 3 items, got [1, 2]"),
        ({"weights": {"enrgy": 1}}, "unknown key 'weights.enrgy' (did you mean 'energy'?)"),
        ({"hessian": "newton"}, "hessian: must be one of 'exact' or 'limited-memory', got 'newton'"),
        ({"max_iter": 0}, "max_iter: must be >= 1, got 0"),
        ({"max_wall_s": 0}, "max_wall_s: must be > 0, got 0"),
        ({"accept_capped": "yes"}, "accept_capped: must be true or false, got 'yes'"),
        ({"feasibility_tol": -1e-6}, "feasibility_tol: must be > 0"),
        ({"warm_multipliers": 0}, "warm_multipliers: must be true or false, got 0"),
        ({"backoff": [0.1]}, "backoff: must have 4 items, got [0.1]"),
        ({"backoff": [-0.1, 0.2, 1.0, 400.0]}, "backoff[0]: must be >= 0, got -0.1"),
        ({"backoff": [1.0, 0.2, 1.0, 400.0]}, "backoff[0]: 1.0 leaves nothing of the window alumina_pct [2.0, 4.0]"),
        ({"backoff_high": [0.3, 1.9, 1.0, 400.0]}, "backoff_high[1]: 1.9 leaves nothing of the window alf3_pct"),
        ({"violation_factor": [1.0, 2.0]}, "violation_factor: must have 4 items, got [1.0, 2.0]"),
        ({"violation_factor": -1}, "violation_factor: must be >= 0, got -1"),
        ({"violation_factor": [1, 2, float("inf"), 4]}, "violation_factor[2]: must be a finite number, got inf"),
        ({"violation_factor": [1, 2, -3, 4]}, "violation_factor[2]: must be >= 0, got -3"),
        ({"violation_factor": "x"}, "violation_factor: must be a number or a list, got 'x'"),
        ({"violation_factor": True}, "violation_factor: must be a number or a list, got True"),
        ({"tol": 0}, "tol: must be > 0, got 0"),
        ({"jit": "true"}, "jit: must be true or false, got 'true'"),
        ({"jit_flags": "-O2"}, "jit_flags: must be a list, got '-O2'"),
        ({"jit_flags": ["-O2", 3]}, "jit_flags[1]: must be a string, got 3"),
        ({"compile_in_background": None}, "compile_in_background: must be true or false, got None"),
        ({"bias_gain": 1.5}, "bias_gain: must be <= 1, got 1.5"),
        ({"acd_rate": 0}, "acd_rate: must be > 0, got 0"),
    ],
)
def test_each_mpc_bound_is_refused_naming_the_key(settings, words):
    with pytest.raises(ConfigError) as err:
        MPCConfig.from_mapping(settings)
    assert str(err.value).startswith(f"MPCConfig: {words}"), str(err.value)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"shifted_intervals": -1}, "shifted_intervals: must be >= 0, got -1"),
        ({"watchdog_s": -1}, "watchdog_s: must be >= 0, got -1"),
        ({"watchdog_s": float("nan")}, "watchdog_s: must be a finite number, got nan"),
        ({"watchdog": 1}, "unknown key 'watchdog' (did you mean 'watchdog_s'?)"),
    ],
)
def test_each_safety_bound_is_refused_naming_the_key(settings, words):
    with pytest.raises(ConfigError) as err:
        SafetyConfig.from_mapping(settings)
    assert str(err.value) == f"SafetyConfig: {words}"


def test_replace_validates_again():
    mpc = MPCConfig()
    with pytest.raises(ConfigError, match=r"^MPCConfig: horizon: must be >= 1, got 0$"):
        dataclasses.replace(mpc, horizon=0)
    assert dataclasses.replace(mpc, horizon=3, jit=False).horizon == 3
    with pytest.raises(ConfigError, match=r"^SafetyConfig: watchdog_s: must be >= 0"):
        dataclasses.replace(SafetyConfig(), watchdog_s=-1.0)


def test_yaml_of_both_sections_with_several_mistakes_at_once(tmp_path):
    path = tmp_path / "mpc.yaml"
    path.write_text(
        "mpc:\n  horizon: 6\n  jit: false\n  weights: {energy: 2, move: [1, 2, 3]}\n  backoff: [0.2, 0.2, 1, 300]\n"
        "safety:\n  watchdog_s: 0\n"
    )
    cfg = ControllerConfig.from_yaml(path)
    assert cfg.mpc == MPCConfig(
        horizon=6, jit=False, weights=CostWeights(energy=2.0, move=(1.0, 2.0, 3.0)), backoff=(0.2, 0.2, 1.0, 300.0)
    )
    assert cfg.safety == SafetyConfig(watchdog_s=0.0)
    path.write_text("mpc:\n  horizon: 0\n  hesian: exact\nsafety:\n  shifted_intervals: -1\nsaftey: {}\n")
    with pytest.raises(ConfigError) as err:
        ControllerConfig.from_yaml(path)
    assert err.value.problems == (
        "mpc.horizon: must be >= 1, got 0",
        "unknown key 'mpc.hesian' (did you mean 'hessian'?)",
        "safety.shifted_intervals: must be >= 0, got -1",
        "unknown key 'saftey' (did you mean 'safety'?)",
    )
    assert str(err.value).startswith(f"{path}: mpc.horizon") and "\n" not in str(err.value)


def test_one_section_loads_alone(tmp_path):
    path = tmp_path / "safety.yaml"
    path.write_text("shifted_intervals: 1\n")
    assert SafetyConfig.from_yaml(path) == SafetyConfig(shifted_intervals=1)
    path.write_text("interval_steps: 30\n")
    assert MPCConfig.from_yaml(path) == MPCConfig(interval_steps=30)


def test_example_deploy_mpc_yaml_holds_the_defaults():
    assert ControllerConfig.from_yaml(REPO / "deploy" / "mpc.yaml") == ControllerConfig()


def test_jit_flags_keep_the_floating_point_policy():
    """The NMPC's compile goes through alutwin.cbuild, which builds every kernel without fast-math or FMA
    contraction: flags that would break that are refused in the config, before any build."""
    assert MPCConfig(jit_flags=("-O2", "-march=native")).jit_flags == ("-O2", "-march=native")
    for bad in ("-ffast-math", "-Ofast", "-ffp-contract=fast"):
        with pytest.raises(ValueError, match=f"jit_flags: flags \\['{bad}'\\] break the floating-point policy"):
            MPCConfig(jit_flags=("-O1", bad))
