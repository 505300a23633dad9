"""``alutwin fleet fit`` (:mod:`apps.fleet.fit`): a local Ray fits 4 small cells and registers them in a twin,
bit-identical to the same cells fitted one after another; a failed cell is reported and the others go on; the
configuration is validated and a missing Ray is a one-line usage error.

One Ray for the module (started once: a few seconds on 2 cores), with 2 CPUs.
"""

from __future__ import annotations

import json
import secrets
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import alutwin.cli  # noqa: E402
from apps.fleet import fit as fleet  # noqa: E402
from identification.modelfile import load_model, load_model_bytes  # noqa: E402

SMALL = fleet.FleetFitConfig(cells=4, members=2, epochs=3, retrain_epochs=1, n_traj=3, n_steps=200, seed=7)
"""4 small cells: 2 members, a few epochs on 3 trajectories of 200 steps (a fraction of a second each)."""

SMALL_FLAGS = ["--members", "2", "--epochs", "3", "--retrain-epochs", "1", "--train", "3", "--steps", "200"]
SMALL_FLAGS += ["--seed", "7", "--quiet"]

_REAL_TASK = fleet._cell_task


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the whole module (fit_fleet uses it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sequential() -> list[fleet.CellResult]:
    """The 4 small cells fitted one after another in this process, without Ray."""
    results = fleet.fit_fleet(SMALL, sequential=True)
    assert all(r.ok for r in results), [r.error for r in results]
    return results


def _manifest(raw: bytes) -> dict:
    doc = json.loads(raw)
    doc.pop("created")  # the one field that differs between two fits of the same cell
    return doc


def test_a_local_ray_fits_and_registers_4_cells_identical_to_the_sequential_fit(
    local_ray, sequential, start_twin, tmp_path, monkeypatch, capsys
):
    token = secrets.token_hex(16)
    monkeypatch.setenv("FLEET_TEST_TWIN_TOKEN", token)
    with start_twin(tmp_path / "store", token=token) as (server, client):
        argv = ["fleet", "fit", "--cells", "4", *SMALL_FLAGS, "--twin", server.address]
        assert alutwin.cli.main([*argv, "--twin-token-env", "FLEET_TEST_TWIN_TOKEN"]) == 0
        out = capsys.readouterr().out
        assert "on Ray (local)" in out and "4 of 4 cells fitted" in out
        models, _ = client.list_models()
        assert sorted(m.name for m in models) == ["cell-000", "cell-001", "cell-002", "cell-003"]
        for seq in sequential:
            exported = client.export(seq.name, alias="champion")
            assert exported.model.version == 1 and f"{seq.name}: fitted in" in out
            manifest, weights = seq.files
            assert exported.weights == weights  # bit for bit: the same code on the same seed
            assert _manifest(exported.manifest_json) == _manifest(manifest)
            assert exported.load().manifest["provenance"]["fleet"]["cell"] == seq.cell
        # a re-fit is a new version of each cell's model, the champion moved to it
        again = fleet.fit_fleet(SMALL, publish=fleet.twin_publisher(client))
        assert [r.note for r in again] == [f"twin cell-00{c} v2" for c in range(4)]
        assert client.get_model("cell-002", alias="champion").model.version == 2
        # without the token the twin refuses each registration: every cell fails, with the reason
        monkeypatch.delenv("FLEET_TEST_TWIN_TOKEN")
        assert alutwin.cli.main([*argv, "--cells", "2", "--twin-token-env", "FLEET_TEST_TWIN_TOKEN"]) == 1
        captured = capsys.readouterr()
        assert "cell-000: FAILED: publishing:" in captured.out and "2 of 2 cells failed" in captured.err


def test_the_cells_have_their_own_seeds_and_models(sequential):
    seeds = [fleet.cell_seed(SMALL.seed, c) for c in range(SMALL.cells)]
    assert len(set(seeds)) == SMALL.cells and fleet.cell_seed(SMALL.seed + 1, 0) != seeds[0]
    loaded = [load_model_bytes(*r.files) for r in sequential]
    assert [m.manifest["provenance"]["seed"] for m in loaded] == seeds
    first, second = (m.surrogate.weights.weights[0] for m in loaded[:2])  # (M, 13, 20) each
    assert first.shape == (2, 13, 20) and not np.array_equal(first, second)
    assert all(m.kind == "sparse-inputskip" and m.surrogate.weights.n_members == 2 for m in loaded)


def _task_failing_in_cell_1(cell: int, config: fleet.FleetFitConfig):
    if cell == 1:
        raise RuntimeError("no data for cell 1")
    return _REAL_TASK(cell, config)


def test_a_failed_cell_is_reported_and_the_others_go_on(local_ray, sequential, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task below runs in Ray's workers
    monkeypatch.setattr(fleet, "_cell_task", _task_failing_in_cell_1)
    seen = []

    def publish(name, files):
        if name == "cell-002":
            raise OSError("disk full")
        return f"kept {name}"

    results = fleet.fit_fleet(SMALL, publish=publish, on_cell=seen.append)
    assert sorted(r.name for r in seen) == [r.name for r in results]  # each reported as it finished
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error == "RuntimeError: no data for cell 1" and results[1].files is None
    assert results[2].error == "publishing: OSError: disk full" and results[2].files is not None
    assert [results[0].note, results[3].note] == ["kept cell-000", "kept cell-003"]
    assert results[3].files[1] == sequential[3].files[1]


def test_sequential_fit_writes_model_directories_without_ray(sequential, tmp_path, capsys):
    out = tmp_path / "models"
    argv = ["fleet", "fit", "--cells", "2", *SMALL_FLAGS, "--sequential", "--out", str(out)]
    assert alutwin.cli.main(argv) == 0
    assert "one after another" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cell-000", "cell-001"]
    for seq in sequential[:2]:
        model = load_model(out / seq.name)
        assert (out / seq.name / "weights.safetensors").read_bytes() == seq.files[1]
        assert model.manifest["provenance"]["fleet"] == {
            "cell": seq.cell,
            "base_seed": 7,
            "cell_seed": fleet.cell_seed(7, seq.cell),
        }


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fleet, "ray_available", lambda: False)
    assert alutwin.cli.main(["fleet", "fit", "--cells", "2", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"alutwin fleet fit: error: {fleet.RAY_MISSING}"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(ImportError, match=r"pip install 'alutwin\[fleet\]'"):
        fleet.fit_fleet(SMALL)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cells", "0"], "--cells must be an integer of at least 1, got 0"),
        (["--cells", "2", "--members", "0"], "--members must be an integer of at least 1, got 0"),
        (["--cells", "2", "--steps", "1"], "--steps must be an integer of at least 2, got 1"),
        (["--cells", "2", "--seed", "-1"], "--seed must be an integer of at least 0, got -1"),
        (["--cells", "2", "--kind", "huge"], "--kind: unknown kind 'huge'"),
        (["--cells", "2", "--sequential", "--address", "auto"], "--address is for a fit on Ray"),
        (["--cells", "2", "--twin-tls-ca", "ca.pem"], "--twin-tls-ca needs --twin"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_flag(argv, message, tmp_path, capsys):
    assert alutwin.cli.main(["fleet", "fit", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_twin_fails_before_any_fit(capsys):
    argv = ["fleet", "fit", "--cells", "2", *SMALL_FLAGS, "--sequential", "--twin", "127.0.0.1:1"]
    assert alutwin.cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "the twin at 127.0.0.1:1 does not answer (UNAVAILABLE): nothing fitted" in err


def test_config_and_cell_are_validated():
    with pytest.raises(ValueError, match=r"FleetFitConfig\.threads must be an integer of at least 1, got True"):
        fleet.FleetFitConfig(cells=2, threads=True)
    with pytest.raises(ValueError, match=r"cell must be an integer in 0\.\.3, got 4"):
        fleet.fit_cell(4, SMALL)
    with pytest.raises(ValueError, match="address is for a fit on Ray"):
        fleet.fit_fleet(SMALL, sequential=True, address="auto")
    assert fleet.cell_name(17) == "cell-017" and fleet.cell_name(1234) == "cell-1234"
