"""``alutwin demo`` (``make demo``): the whole system on loopback, shrunk to a few control intervals."""

from __future__ import annotations

import json
import socket

import pytest

from apps.system_demo import DemoConfig, main, run_demo


@pytest.mark.slow
def test_the_whole_system_runs_reports_and_shuts_down(tmp_path):
    out = tmp_path / "demo"
    before = _listening()
    doc = run_demo(DemoConfig(hours=0.34, seed=3, progress=False, jit=False), out)  # 2 intervals + 4 steps
    results = {r["controller"]: r for r in doc["results"]}
    assert set(results) == {"baseline", "sparse"}
    for r in results.values():
        assert r["steps"] == 122 and not r["fault"]
        assert r["energy_kwh"] > 0 and r["kwh_per_kg"] > 0
    sparse = results["sparse"]
    assert sparse["solves"] >= 2  # the NMPC decided the intervals (or its safety layer said why not)
    assert (out / "report.md").read_text().count("sparse") >= 1
    assert (out / "trajectories_seed3.png").stat().st_size > 10_000
    assert (out / "online.md").read_text().startswith("# The online re-fit worker")
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["settings"]["demo"]["seed"] == 3 and "online" in on_disk
    assert _listening() <= before  # the plant, the twin and their servers are gone


def test_bad_arguments_get_a_clear_error_and_exit_code_2(tmp_path, capsys):
    assert main(["--hours", "-1", "--out", str(tmp_path)]) == 2
    assert "hours must be a positive number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no model directory"):
        DemoConfig(models_dir=tmp_path)


def _listening() -> set[int]:
    """Ports listening on 127.0.0.1 (from /proc/net/tcp)."""
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[1].startswith("0100007F"):
                ports.add(int(parts[1].split(":")[1], 16))
    return ports


def test_socket_helper_sees_a_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        assert s.getsockname()[1] in _listening()
    finally:
        s.close()
