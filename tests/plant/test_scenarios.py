"""Scenario events of the potline: a drift changes the dynamics exactly from its step (oracle: the same potline
started there with the drifted constants), sensor faults change the measurements only, config validation, and
the plant service reporting the events."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from plant.client import PlantClient
from plant.config import PlantConfig
from plant.params import DEFAULT_PARAMS
from plant.potline import Potline
from plant.scenarios import DRIFT_PARAMETERS, ScenarioEvent, apply_drift, parse_scenario
from plant.service import create_server
from plant.signals import X

BASE = {"n_cells": 3, "seed": 4, "port": 0}


def run(potline: Potline, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True states and measurements ``(n + 1, N, 8)`` each, from the present step on."""
    xs, ys = [potline.states], [np.stack([s.y for s in potline.snapshots()])]
    for _ in range(n):
        potline.step()
        xs.append(potline.states)
        ys.append(np.stack([s.y for s in potline.snapshots()]))
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize(
    ("parameter", "factor", "cells"),
    [("h_bath_ledge", 1.2, [1]), ("current_efficiency", 0.95, None)],
)
def test_a_drift_changes_the_dynamics_exactly_from_its_step(parameter, factor, cells):
    event = {"kind": "drift", "at_s": 95.0, "parameter": parameter, "factor": factor, "cells": cells}
    drifted = Potline.from_config(PlantConfig(**BASE, scenario=[event]))
    plain = Potline.from_config(PlantConfig(**BASE))
    assert drifted.scenario_status()[0].at_step == 10  # ceil(95 s / 10 s)
    x_d, _ = run(drifted, 10)
    x_p, _ = run(plain, 10)
    np.testing.assert_array_equal(x_d, x_p)  # identical up to the step of the drift
    assert drifted.scenario_status()[0].fired
    new = apply_drift(DEFAULT_PARAMS, parameter, factor)
    hit = [1] if cells else [0, 1, 2]
    assert all(drifted.cell_params(c) == (new if c in hit else DEFAULT_PARAMS) for c in range(3))
    assert drifted.snapshot(hit[0]).params == new
    oracle = Potline(len(hit), 0, x0=x_d[-1, hit], params=new)  # the same cells, started here, drifted
    x_d, _ = run(drifted, 40)
    x_p, _ = run(plain, 40)
    x_o, _ = run(oracle, 40)
    np.testing.assert_array_equal(x_d[:, hit], x_o)
    assert (x_d[1, hit] != x_p[1, hit]).any(), "the drift did not act on the first step after it"
    rest = [c for c in range(3) if c not in hit]
    np.testing.assert_array_equal(x_d[:, rest], x_p[:, rest])


def test_current_efficiency_scales_both_faraday_terms_only():
    new = apply_drift(DEFAULT_PARAMS, "current_efficiency", 0.95)
    assert new.k3 == DEFAULT_PARAMS.k3 * 0.95 and new.k6 == DEFAULT_PARAMS.k6 * 0.95
    changed = {f.name for f in dataclasses.fields(new) if getattr(new, f.name) != getattr(DEFAULT_PARAMS, f.name)}
    assert changed == {"k3", "k6"}
    ledge = apply_drift(DEFAULT_PARAMS, "h_bath_ledge", 1.2)
    assert ledge.k2 == pytest.approx(DEFAULT_PARAMS.k2 * 1.2, rel=1e-15)  # derived constants follow
    assert "current_efficiency" in DRIFT_PARAMETERS and "k19" in DRIFT_PARAMETERS


def test_sensor_faults_change_the_measurements_only():
    scenario = [
        {"kind": "stuck_sensor", "at_s": 50, "state": "T_bath", "cells": [0]},  # held at its reading
        {"kind": "offset_sensor", "at_s": 50, "state": "T_bath", "offset": 15.0, "cells": [1]},
        {"kind": "stuck_sensor", "at_s": 30, "state": "m_al2o3", "value": 500.0, "cells": [2]},
    ]
    poisoned = Potline.from_config(PlantConfig(**BASE, scenario=scenario))
    plain = Potline.from_config(PlantConfig(**BASE))
    x_p, y_p = run(poisoned, 30)
    x_c, y_c = run(plain, 30)
    np.testing.assert_array_equal(x_p, x_c)  # the true states (and so the controllers' inputs) are unaffected
    np.testing.assert_array_equal(y_c, x_c)  # no noise: clean measurements are the states
    expected = y_c.copy()
    expected[5:, 0, X.T_BATH] = x_c[5, 0, X.T_BATH]
    expected[5:, 1, X.T_BATH] += 15.0
    expected[3:, 2, X.M_AL2O3] = 500.0
    np.testing.assert_array_equal(y_p, expected)
    assert np.ptp(x_c[5:, 0, X.T_BATH]) > 0  # the true bath temperature does move meanwhile
    assert [s.fired for s in poisoned.scenario_status()] == [True, True, True]


def test_noise_stream_is_unchanged_by_sensor_faults():
    noise = [0, 0, 0, 0, 0, 2.0, 0, 0]
    event = {"kind": "offset_sensor", "at_s": 0, "state": "T_ledge", "offset": -3.0}
    a = Potline.from_config(PlantConfig(**BASE, noise_std=noise, scenario=[event]))
    b = Potline.from_config(PlantConfig(**BASE, noise_std=noise))
    _, y_a = run(a, 5)
    _, y_b = run(b, 5)
    y_b[..., X.T_LEDGE] -= 3.0
    np.testing.assert_array_equal(y_a, y_b)


@pytest.mark.parametrize(
    ("events", "words"),
    [
        ([{"kind": "wobble", "at_s": 0}], "scenario[0].kind: must be one of 'drift', 'stuck_sensor' or"),
        ([{"kind": "drift", "at_s": 0, "parameter": "magic", "factor": 1.0}], "scenario[0].parameter: must be one of"),
        ([{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 0.0}], "scenario[0].factor: must be > 0, got 0"),
        ([{"kind": "drift", "at_s": 0, "parameter": "k3"}], "scenario[0]: a drift event needs ['factor']"),
        ([{"kind": "drift", "at_s": -1, "parameter": "k3", "factor": 1.1}], "scenario[0].at_s: must be >= 0, got -1"),
        (
            [{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": float("nan")}],
            "scenario[0].factor: must be a finite number",
        ),
        ([{"kind": "stuck_sensor", "at_s": 0, "state": "T_moon"}], "scenario[0].state: must be one of"),
        (
            [{"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "value": 3}],
            "scenario[0]: an offset_sensor event takes no ['value']",
        ),
        (
            [{"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "cells": [7]}],
            "scenario[0].cells: [7] do not exist; the potline has cells 0..2",
        ),
        (
            [{"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "cells": [1, 1]}],
            "scenario[0].cells: names a cell twice",
        ),
        (
            [{"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "cells": []}],
            "scenario[0].cells: must name at least one cell",
        ),
        ([{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 1, "cell": [0]}], "unknown key 'scenario[0].cell'"),
        ({"kind": "drift"}, "scenario: must be a list"),
    ],
)
def test_bad_scenarios_are_refused_with_the_field_named(events, words):
    with pytest.raises(ValueError, match=r"^PlantConfig: ") as err:
        PlantConfig(**BASE, scenario=events)
    assert words in str(err.value)
    with pytest.raises(ValueError) as err:
        Potline(3, seed=0, scenario=events)  # the potline checks its events the same way
    assert words in str(err.value)


def test_every_bad_event_is_named_at_once():
    events = [
        {"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 1.1, "cells": [5]},
        {"kind": "stuck_sensor", "at_s": -1, "state": "T_bath"},
        {"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "cells": [3, 4]},
    ]
    with pytest.raises(ValueError) as err:
        parse_scenario(events)
    assert str(err.value) == "scenario[1].at_s: must be >= 0, got -1"  # the fields first
    del events[1]
    with pytest.raises(ValueError) as err:
        parse_scenario(events, n_cells=3)
    assert str(err.value) == (
        "scenario[0].cells: [5] do not exist; the potline has cells 0..2; "
        "scenario[1].cells: [3, 4] do not exist; the potline has cells 0..2"
    )
    assert parse_scenario(None) == () and parse_scenario(events) == tuple(ScenarioEvent(**e) for e in events)


def test_events_from_code_are_validated_and_replace_validates_again():
    event = ScenarioEvent("drift", 10, parameter="k3", factor=2)
    assert event.at_s == 10.0 and isinstance(event.at_s, float) and event.cells is None
    assert (
        ScenarioEvent.from_mapping({"kind": "stuck_sensor", "at_s": 0, "state": "T_bath", "cells": "all"}).cells is None
    )
    with pytest.raises(ValueError, match=r"^ScenarioEvent: a drift event takes no \['state'\]"):
        dataclasses.replace(event, state="T_bath")
    with pytest.raises(ValueError, match=r"^ScenarioEvent: factor: must be > 0, got -2"):
        dataclasses.replace(event, factor=-2)


def test_scenario_from_yaml_and_over_grpc(tmp_path: Path):
    config = tmp_path / "plant.yaml"
    config.write_text(
        "n_cells: 2\nseed: 0\nport: 0\ngrace_s: 0\nscenario:\n"
        "  - {kind: drift, at_s: 20, parameter: current_efficiency, factor: 0.95, cells: all}\n"
        "  - {kind: stuck_sensor, at_s: 1000, state: T_bath, value: 970.0, cells: [1]}\n"
    )
    cfg = PlantConfig.from_yaml(config)
    assert cfg.scenario == parse_scenario(
        [
            ScenarioEvent("drift", 20.0, None, parameter="current_efficiency", factor=0.95),
            ScenarioEvent("stuck_sensor", 1000.0, (1,), state="T_bath", value=970.0),
        ]
    )
    server, _ = create_server(cfg)
    server.start()
    try:
        with PlantClient(server.address, timeout=5) as client:
            client.step(2)
            info = client.info()
    finally:
        server.stop(0)
    assert [(s.event, s.at_step, s.fired) for s in info.scenario] == [
        (cfg.scenario[0], 2, True),
        (cfg.scenario[1], 100, False),
    ]
    assert "current_efficiency x 0.95 on all cells" in cfg.scenario[0].describe()
