"""The whole system on loopback (apps.runner, apps.control): a short closed loop through the plant service and
the twin, with its report, and clear errors for bad command-line arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.control import main as control_main
from apps.runner import SystemConfig, run_system
from controller.closed_loop import Scenario
from controller.config import MPCConfig
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
