"""The identification study end to end at a tiny size: results, figures, report, resume."""

from __future__ import annotations

import json

import pytest

from alutwin.cli import main
from identification.modelfile import load_model


def test_quick_study_writes_results_figures_and_report(tmp_path):
    out = tmp_path / "study"
    assert main(["study", "--quick", "--out", str(out), "--quiet", "--kinds", "dense", "structured"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"dense@2", "dense@3", "structured@2", "structured@3"}
    for r in results["runs"].values():
        assert r["rollouts"] == 4 and 0 <= r["diverged"] <= 4
        assert 0 <= r["structure_jacobian"]["f1"] <= 1 and len(r["nrmse"]) == 8
    # Exact sparsity is real: the structured models are pruned below the dense count.
    assert results["runs"]["structured@3"]["nonzero_exact"] < results["runs"]["dense@3"]["nonzero_exact"] == 1620
    for png in ("error_vs_horizon.png", "divergence.png", "structure.png", "nonzeros_vs_lambda.png"):
        assert (out / png).stat().st_size > 5000
    # The ensembles of the largest size are saved as model files that load back with their provenance.
    loaded = load_model(out / "models" / "structured")
    assert loaded.kind == "structured" and loaded.provenance["n_traj"] == 3
    assert loaded.surrogate.weights.nonzero(0.0).sum() / 2 == results["runs"]["structured@3"]["nonzero_exact"]
    assert not (out / "models" / "dense@2").exists()
    # the models of the largest size are also scored on the sets beyond the training excitation (quick: one)
    for key in ("dense@3", "structured@3"):
        beyond = results["runs"][key]["test_sets"]
        assert set(beyond) == {"closed-loop"} and beyond["closed-loop"]["rollouts"] == 4
    assert "test_sets" not in results["runs"]["dense@2"]
    report = (out / "README.md").read_text()
    assert "| structured | 3 |" in report and "## Do the paper's claims hold on our plant?" in report
    assert "## Beyond the training excitation, 3 training trajectories" in report and "| closed-loop |" in report
    # --resume keeps the finished runs and trains nothing new.
    before = (out / "results.json").read_text()
    assert main(["study", "--quick", "--out", str(out), "--quiet", "--kinds", "dense", "structured", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == json.loads(before)["runs"]


def test_study_refuses_unknown_kind(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse rejects the choice
        main(["study", "--quick", "--out", str(tmp_path), "--kinds", "magic"])
    assert exc.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err
