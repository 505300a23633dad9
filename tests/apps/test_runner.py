"""The whole system on loopback (apps.runner, apps.control): a short closed loop through the plant service and
the twin, with its report, and clear errors for bad command-line arguments."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from apps.commands import register_control
from apps.control import build_config
from apps.control import main as control_main
from apps.runner import SystemConfig, run_system
from controller.closed_loop import Scenario
from controller.config import MPCConfig, SafetyConfig
from controller.problem import WINDOWS
from controller.report import write_report


def test_short_closed_loop_through_the_services_end_to_end(tmp_path):
    config = SystemConfig(
        scenarios=(Scenario(hours=0.1, seed=1),),
        controllers=("baseline", "oracle", "sparse"),
        mpc=MPCConfig(interval_steps=6, horizon=2, jit=False),
        progress=False,
    )
    traces = run_system(config)
    assert [t.controller for t in traces] == ["baseline", "oracle", "sparse"]
    for t in traces:
        assert t.x.shape == (37, 8) and t.u.shape == (36, 5) and not t.fault
        assert np.all(np.isfinite(t.x))
    np.testing.assert_array_equal(traces[0].x[0], traces[2].x[0])  # the same seeded scenario
    np.testing.assert_array_equal(traces[0].u[:, 1], traces[2].u[:, 1])  # the same current
    assert traces[2].model["kind"] == "sparse-inputskip" and traces[2].model["version"] == 1
    assert all(m == "mpc" for m in traces[1].modes)
    doc = write_report(traces, tmp_path / "report", settings={"test": True})
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.md", "report.json", "trajectories_seed1.png"} <= files
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["headline"]["cost_ratio_sparse_oracle"] == pytest.approx(doc["headline"]["cost_ratio_sparse_oracle"])
    for r in data["results"]:
        assert r["energy_kwh"] > 0 and r["kwh_per_kg"] > 0 and set(r["windows"]) == {w.name for w in WINDOWS}
    assert "| 1 | sparse |" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hours", "-1"], "--hours must be a positive number"),
        (["--interval-min", "0.1"], "--interval-min must be a whole number of 10 s steps"),
        (["--horizon-h", "0.25"], "--horizon-h (0.25) must be a whole multiple of --interval-min"),
        (["--controllers", "baseline,pid"], "controllers must be distinct names from"),
        (["--seeds", "a,b"], "--seeds must be a comma-separated list of integers"),
        (["--models", "/nonexistent", "--controllers", "sparse"], "/nonexistent/sparse-inputskip"),
    ],
)
def test_cli_reports_bad_arguments_clearly(argv, message, capsys, tmp_path):
    assert control_main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alutwin control: error:") and message in err
    assert not (tmp_path / "out").exists()


def _control_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alutwin")
    register_control(parser.add_subparsers(dest="command"))
    return parser.parse_args(["control", *argv])


def test_the_mpc_config_file_is_the_base_that_the_flags_override(tmp_path):
    assert build_config(_control_args()).mpc == MPCConfig(interval_steps=60, horizon=12, jit=True)  # the defaults
    assert build_config(_control_args()).safety == SafetyConfig(watchdog_s=30.0)
    path = tmp_path / "mpc.yaml"
    path.write_text(
        "mpc:\n  interval_steps: 30\n  horizon: 24\n  max_iter: 40\n  violation_factor: 5\n"
        "safety:\n  shifted_intervals: 1\n  watchdog_s: 5\n"
    )
    config = build_config(_control_args("--mpc-config", str(path)))
    assert config.mpc == MPCConfig(interval_steps=30, horizon=24, max_iter=40, violation_factor=5.0)
    assert config.safety == SafetyConfig(shifted_intervals=1, watchdog_s=5.0)
    flags = ("--interval-min", "10", "--no-jit", "--watchdog-s", "0")
    config = build_config(_control_args("--mpc-config", str(path), *flags))
    assert (config.mpc.interval_steps, config.mpc.horizon) == (60, 12)  # the file's horizon of 2 h, in 10 min intervals
    assert config.mpc.max_iter == 40 and config.mpc.violation_factor == 5.0 and not config.mpc.jit
    assert config.safety == SafetyConfig(shifted_intervals=1, watchdog_s=0.0)
    config = build_config(_control_args("--mpc-config", str(path), "--horizon-h", "3"))
    assert (config.mpc.interval_steps, config.mpc.horizon) == (30, 36)


def test_a_bad_mpc_config_file_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "mpc.yaml"
    path.write_text("mpc:\n  horizn: 6\n  max_iter: 0\n")
    assert control_main(["--mpc-config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alutwin control: error: {path}: ")
    assert "mpc.max_iter: must be >= 1, got 0" in err and "unknown key 'mpc.horizn' (did you mean 'horizon'?)" in err
    assert not (tmp_path / "out").exists()
