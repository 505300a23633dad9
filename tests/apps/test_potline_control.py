"""``alutwin control --ray``: a potline of 4 cells, one NMPC per cell hosted by local Ray actors, for 2 control
intervals, with one injected solver failure: that cell falls back alone, the others go on; the report covers
every cell and the line. Also the command line's checks of the flags that go with ``--ray``, and its message when
Ray is not installed.

Short settings keep it quick: 1-minute intervals, a 3-interval horizon, no C compile of the NLP, no wall cap
(CasADi's virtual machine is slower than the compiled NLP, and the point here is who decides, not how fast).
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from alutwin.cli import main as cli_main
from apps.fleet import cell_name
from apps.fleet.control import PotlineConfig, run_potline
from controller.closed_loop import DEFAULT_MODELS, SURROGATE_DIRS
from controller.config import MPCConfig, SafetyConfig
from controller.potline_report import write_potline_report

N_CELLS, FAILING, INTERVALS, STEPS = 4, 2, 2, 6


@pytest.fixture(scope="module")
def potline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict, list, dict]:
    config = PotlineConfig(
        cells=tuple(range(N_CELLS)),
        hours=INTERVALS * STEPS * 10 / 3600,
        seed=5,
        mpc=MPCConfig(interval_steps=STEPS, horizon=3, jit=False, max_wall_s=120.0),
        safety=SafetyConfig(shifted_intervals=0, watchdog_s=0.0),
        workers=2,
        models_dir=DEFAULT_MODELS / SURROGATE_DIRS["sparse"],
        fail_solves={FAILING: [1]},  # the second solve of cell 2
    )
    timings: list[dict[str, float]] = []
    traces, run = run_potline(config, timings=timings)
    doc = write_potline_report(traces, tmp_path_factory.mktemp("potline"), settings=run, timings=timings)
    return traces, run, timings, doc


def test_every_cell_is_decided_by_its_own_ray_hosted_nmpc(potline_run) -> None:
    traces, run, timings, _ = potline_run
    assert [t.controller for t in traces] == [cell_name(c) for c in range(N_CELLS)]
    hosts = run["ray"]["hosts"]
    assert len(hosts) == 2 and sorted(c for h in hosts for c in h["cells"]) == list(range(N_CELLS))
    pids = {h["pid"] for h in hosts}
    assert len(pids) == 2 and os.getpid() not in pids  # the NMPCs ran in two other processes
    for i, trace in enumerate(traces):
        assert len(trace.modes) == INTERVALS and len(trace.plans) == INTERVALS
        assert len(trace.u) == INTERVALS * STEPS and not trace.fault
        assert trace.model["host_pid"] == next(h["pid"] for h in hosts if i in h["cells"])
        assert trace.model["name"] == f"twin:{cell_name(i)}@champion"
    assert len(timings) == INTERVALS and all(t["decide_s"] > 0 and t["advance_s"] > 0 for t in timings)


def test_the_injected_failure_falls_back_alone(potline_run) -> None:
    traces, _, _, _ = potline_run
    failing = traces[FAILING]
    assert failing.plans[1].status == "injected failure"
    assert failing.modes == ["mpc", "fallback"]
    assert failing.safety["fallback_intervals"] == 1 and failing.safety["failures"] == 1
    for i, trace in enumerate(traces):
        if i == FAILING:
            continue
        assert trace.modes == ["mpc", "mpc"], (i, [p.status for p in trace.plans])
        assert all(p.success and p.status != "injected failure" for p in trace.plans)
        assert trace.safety["fallback_intervals"] == 0


def test_the_report_covers_every_cell_and_the_line(potline_run) -> None:
    traces, _, timings, doc = potline_run
    line, cells = doc["line"], doc["cells"]
    assert line["cells"] == N_CELLS and [r["cell"] for r in cells] == [t.controller for t in traces]
    assert line["fallback_intervals"] == 1 and line["cells_with_fallback"] == 1
    assert line["solves"] == N_CELLS * INTERVALS and line["failures"] == 1
    assert sum(r["fallback_intervals"] for r in cells) == 1
    energy = sum(r["kwh_per_kg"] for r in cells) / N_CELLS
    assert 5.0 < line["kwh_per_kg"] < 20.0 and math.isclose(line["kwh_per_kg"], energy, rel_tol=0.05)
    assert line["interval_decide_s"]["each"] == pytest.approx([t["decide_s"] for t in timings], rel=1e-12)
    json.dumps(doc, allow_nan=False)  # no NaN anywhere


def _control(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(["control", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "--cells", "0"], "--ray needs --cells N"),
        (["--ray"], "--ray needs --cells N"),
        (["--ray", "--cells", "4", "--controllers", "dense"], "--ray runs the sparse-surrogate NMPC on every cell"),
        (["--ray", "--cells", "4", "--seeds", "0,1"], "--ray runs one potline scenario"),
        (["--ray", "--cells", "4", "--noise"], "--noise does not go with --ray"),
        (["--ray", "--cells", "4", "--ray-workers", "0"], "--ray-workers must be >= 1"),
        (["--cells", "4", "--ray-workers", "2"], "--ray-workers need --ray"),
    ],
)
def test_flags_that_do_not_go_with_ray_are_refused(args, message, capsys) -> None:
    code, err = _control([*args, "--hours", "0.1"], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code, err = _control(["--ray", "--cells", "4", "--hours", "0.1", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "pip install 'alutwin[fleet]'" in err
    assert not (tmp_path / "out").exists()
