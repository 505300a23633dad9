"""The demo runs with a shrunken horizon and writes a plot and a summary that agree with the simulation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import alutwin.cli
from plant.demo import BASELINE_ACD, WINDOWS, main, run_scenario, summarise
from plant.params import DEFAULT_PARAMS
from plant.physics import algebraic
from plant.signals import U, X

EXPECTED_LINES = (
    "alutwin plant-demo: one cell, 0.5 h (180 steps of 10 s), seed 2",
    "energy: ",
    "metal produced: ",
    "specific energy: ",
    "inside alumina window 2-4 %: ",
    "inside AlF3 window 10-12 %: ",
    "inside superheat window 5-15 degC: ",
    "inside ledge window 2000-4500 kg: ",
    "range of alumina: ",
    "range of superheat: ",
    "range of cell voltage: ",
    "range of line current: ",
    "faults: ",
)


def _number(lines: list[str], prefix: str) -> float:
    line = next(ln for ln in lines if ln.startswith(prefix))
    return float(re.search(r"-?\d+(\.\d+)?", line[len(prefix) :]).group())


def test_main_writes_png_and_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--hours", "0.5", "--seed", "2"]) == 0
    png = out / "baseline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    lines = (out / "summary.txt").read_text().splitlines()
    for prefix in EXPECTED_LINES:
        assert any(ln.startswith(prefix) for ln in lines), prefix
    printed = capsys.readouterr().out
    assert all(ln in printed for ln in lines)
    for w in WINDOWS.values():
        pct = _number(lines, f"inside {w.name} window {w.low:g}-{w.high:g} {w.unit}: ")
        assert 0.0 <= pct <= 100.0


def test_summary_numbers_match_the_simulation() -> None:
    sc = run_scenario(2, 0.5, engine="numpy")
    x, u, dt = sc.traj.x[0], sc.traj.u[0], sc.traj.dt  # (T+1, 8), (T, 5)
    assert u.shape == (180, 5) and np.all(u[:, U.ACD] == BASELINE_ACD)
    lines = summarise(sc)
    alg = algebraic(x[:-1], u)
    energy = float(np.sum(u[:, U.CURRENT] * alg.cell_voltage) * dt / 3.6e6)
    metal = float(np.sum(DEFAULT_PARAMS.k6 * u[:, U.CURRENT]) * dt)
    assert _number(lines, "energy: ") == pytest.approx(energy, abs=0.06)
    assert _number(lines, "metal produced: ") == pytest.approx(metal, abs=0.06)
    assert _number(lines, "specific energy: ") == pytest.approx(energy / metal, abs=0.006)
    ledge = x[:-1, X.M_LEDGE]
    inside = 100.0 * np.mean((ledge >= 2000.0) & (ledge <= 4500.0))
    assert _number(lines, "inside ledge window 2000-4500 kg: ") == pytest.approx(inside, abs=0.06)
    assert lines[-1] == "faults: none"


def test_same_seed_same_summary_and_seeds_differ() -> None:
    a = summarise(run_scenario(3, 0.2, engine="numpy"))
    b = summarise(run_scenario(3, 0.2, engine="numpy"))
    c = summarise(run_scenario(4, 0.2, engine="numpy"))
    assert a == b and a != c


def test_current_steps_follow_the_aprbs_levels() -> None:
    sc = run_scenario(5, 3.5, engine="numpy")  # 1260 steps: longer than the longest hold (1100 steps)
    current = sc.traj.u[0, :, U.CURRENT]
    assert sc.traj.u.shape[1] == 1260
    assert np.all((current >= 118_000.0) & (current <= 155_000.0))
    assert len(np.unique(current)) >= 2


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """``alutwin.cli.main`` with only the ``demo`` entry point, so other packages' commands cannot interfere."""
    real = alutwin.cli.entry_points
    monkeypatch.setattr(
        alutwin.cli, "entry_points", lambda group: [e for e in real(group=group) if e.name == "plant-demo"]
    )
    return alutwin.cli.main


def test_cli_demo(tmp_path: Path, cli) -> None:
    assert cli(["plant-demo", "--out", str(tmp_path), "--hours", "0.1", "--seed", "1"]) == 0
    assert (tmp_path / "baseline.png").stat().st_size > 0
    assert "seed 1" in (tmp_path / "summary.txt").read_text()


@pytest.mark.parametrize(("flags", "message"), [(["--hours", "0"], "argument --hours"), (["--seed", "-1"], "--seed")])
def test_cli_demo_bad_flags(tmp_path: Path, cli, capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["plant-demo", "--out", str(tmp_path / "d"), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
