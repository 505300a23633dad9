"""Metric functions against hand-computed cases and the plant's own structure."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from identification.metrics import (
    TRUE_STRUCTURE,
    an_rfmse_curve,
    fit_percent,
    jacobian_dependency,
    mean_pairwise_jaccard,
    nrmse,
    path_dependency,
    score_rollouts,
    structure_scores,
)
from identification.network import Architecture, EnsembleWeights
from plant.physics import rhs


def test_an_rfmse_by_hand():
    truth = np.zeros((1, 3, 8))
    pred = np.zeros((1, 3, 8))
    pred[0, 1, 0] = 2.0  # |2| / sigma_0 = 1 -> e_1 = 1/8
    pred[0, 2, :] = 1.0  # each state off by 1 -> e_2 = mean(1/sigma)
    sigma = np.array([2.0, 1, 1, 1, 1, 1, 1, 4])
    e = an_rfmse_curve(pred, truth, sigma)
    np.testing.assert_allclose(e[0], [0.0, 0.125, (0.5 + 6 + 0.25) / 8], rtol=1e-15)


def test_windows_and_divergence_by_hand():
    t = 5001
    truth = np.zeros((3, t, 8))
    pred = np.zeros((3, t, 8))
    pred[0] = 0.5  # e_k = 0.5 everywhere except k = 0
    pred[0, 0] = 0.0
    pred[1, :, :] = 0.0
    pred[1, 3000:, :] = 4.0  # e = 4 > 3 from step 3000: diverged by 5000, not by 2500
    pred[2, 200, 3] = np.nan  # NaN at step 200 counts as diverged
    sc = score_rollouts(pred, truth, np.ones(8))
    np.testing.assert_array_equal(sc.diverged_at, [-1, 3000, 200])
    assert sc.diverged_by(2500) == 1 and sc.diverged_by(5000) == 2 and sc.diverged_by(100) == 0
    assert sc.window_means["100dT"][0] == pytest.approx(0.5 * 99 / 100)
    assert sc.window_means["2500dT"][0] == pytest.approx(0.5) and sc.window_means["5000dT"][0] == pytest.approx(0.5)
    assert np.isnan(sc.window_means["5000dT"][1]) and np.isnan(sc.window_means["100dT"][2])
    s = sc.summary()
    assert s["5000dT_median"] == pytest.approx(0.5) and s["diverged_by_2500dT"] == 1 and s["diverged_by_5000dT"] == 2
    assert s["diverged"] == 2 and s["rollouts"] == 3


def test_nrmse_and_fit_by_hand():
    truth = np.zeros((1, 4, 8))
    truth[0, :, 0] = [0.0, 1.0, 2.0, 3.0]
    pred = truth.copy()
    pred[0, :, 0] += 1.0
    sigma = np.full(8, 2.0)
    assert nrmse(pred, truth, sigma)[0] == pytest.approx(0.5)
    assert nrmse(pred, truth, sigma)[1] == 0.0
    # ||err|| = 2, ||x - mean|| = sqrt(2.25 + .25 + .25 + 2.25) = sqrt(5)
    assert fit_percent(pred, truth)[0] == pytest.approx(100 * (1 - 2 / np.sqrt(5)))
    assert np.isnan(fit_percent(pred, truth)[1])  # a constant state has no FIT


def test_true_structure_is_the_plants_own_jacobian_sparsity():
    x, u = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    sparsity = np.array(ca.jacobian(rhs(x, u), ca.vertcat(x, u)).sparsity()).astype(bool)
    np.testing.assert_array_equal(sparsity, TRUE_STRUCTURE)
    assert TRUE_STRUCTURE.sum() == 37


def test_structure_scores_by_hand():
    dep = TRUE_STRUCTURE.copy()
    assert structure_scores(dep) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "entries": 37}
    dep[1, 0] = True  # one false positive
    dep[0, 0] = False  # one false negative
    s = structure_scores(dep)
    assert s["precision"] == pytest.approx(36 / 37) and s["recall"] == pytest.approx(36 / 37)
    full = structure_scores(np.ones((8, 13), dtype=bool))
    assert full["recall"] == 1.0 and full["precision"] == pytest.approx(37 / 104)
    with pytest.raises(ValueError, match="shape"):
        structure_scores(np.ones((13, 8), dtype=bool))


def test_jaccard_by_hand():
    a = np.zeros((8, 13), dtype=bool)
    a[0, :4] = True
    b = a.copy()
    b[0, 4:6] = True  # |a & b| = 4, |a | b| = 6
    assert mean_pairwise_jaccard(np.stack([a, a])) == 1.0
    assert mean_pairwise_jaccard(np.stack([a, b])) == pytest.approx(4 / 6)
    assert mean_pairwise_jaccard(np.stack([a, b, a])) == pytest.approx((4 / 6 + 1 + 4 / 6) / 3)


def _tiny_weights(skip: bool) -> EnsembleWeights:
    """13 -> 2 -> 8 with hand-placed non-zeros: output 0 <- unit 0 <- input 3; output 5 <- unit 1 <- inputs 1, 12."""
    arch = Architecture(hidden=(2,), skip=skip)
    w0 = np.zeros((1, 13, 2))
    w0[0, 3, 0] = 1.0
    w0[0, 1, 1] = -2.0
    w0[0, 12, 1] = 0.5
    w1 = np.zeros((1, arch.layer_shapes[1][0], 8))
    k = arch.n_skip_rows
    w1[0, k + 0, 0] = 3.0
    w1[0, k + 1, 5] = 1.0
    if skip:
        w1[0, 7, 2] = 0.25  # a direct (linear) path from input 7 to output 2
    return EnsembleWeights(arch, (w0, w1), (np.full((1, 2), 0.1), np.zeros((1, 8))))


@pytest.mark.parametrize("skip", [False, True])
def test_path_and_jacobian_dependency_by_hand(skip):
    w = _tiny_weights(skip)
    expected = np.zeros((8, 13), dtype=bool)
    expected[0, 3] = True
    expected[5, [1, 12]] = True
    if skip:
        expected[2, 7] = True
    np.testing.assert_array_equal(path_dependency(w)[0], expected)
    # Data where both hidden units are active: the Jacobian sees the same structure, with the right values.
    z = np.zeros((4, 13))
    z[:, 3] = 1.0
    z[:, 1] = -1.0
    dep, mean_abs = jacobian_dependency(w, z)
    np.testing.assert_array_equal(dep[0], expected)
    assert mean_abs[0, 0, 3] == pytest.approx(3.0) and mean_abs[0, 5, 1] == pytest.approx(2.0)
    assert mean_abs[0, 5, 12] == pytest.approx(0.5)
    # Where unit 1 is dead on the data (pre-activation < 0), the Jacobian drops its inputs but paths do not.
    z_dead = z.copy()
    z_dead[:, 1] = 1.0
    dep_dead, _ = jacobian_dependency(w, z_dead)
    assert not dep_dead[0, 5].any() and path_dependency(w)[0, 5].any()
