"""The estimator: kinds by name, vectorised training, exact sparsity, block structure, hybrid prior."""

from __future__ import annotations

import numpy as np
import pytest

from identification.estimator import KINDS, SurrogateEstimator, prune
from identification.network import Architecture, EnsembleWeights, forward
from identification.regularizers import L1Penalty
from identification.surrogate import PRIORS
from identification.training import TrainConfig, train_ensemble
from plant import aprbs, sample_initial_states, simulate
from plant.physics import rhs


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(4)
    return simulate(sample_initial_states(rng, 3), aprbs(rng, 3, 400))


def test_vectorised_torch_training_equals_member_by_member():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(200, 13)), rng.normal(size=(200, 8))
    arch = Architecture(hidden=(6, 5))
    cfg = TrainConfig(epochs=2, batch_size=32, dtype="float64")
    seeds = [11, 22, 33]
    together = train_ensemble(arch, z, y, seeds, cfg, L1Penalty())
    for i, s in enumerate(seeds):
        alone = train_ensemble(arch, z, y, [s], cfg, L1Penalty())
        for a, b in zip(together.weights.weights, alone.weights.weights, strict=True):
            np.testing.assert_allclose(a[i], b[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(together.loss_history[:, i], alone.loss_history[:, 0], rtol=1e-12)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown kind 'magic'; must be one of \['dense'"):
        SurrogateEstimator("magic")
    with pytest.raises(ValueError, match="unknown setting 'lamda'"):
        SurrogateEstimator("l1", lamda=1.0)
    with pytest.raises(ValueError, match="unknown trainer"):
        SurrogateEstimator("l1", trainer="gpu")
    with pytest.raises(RuntimeError, match="not fitted"):
        SurrogateEstimator("l1").predict(np.zeros((1, 8)), np.zeros((1, 5)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_fits_predicts_and_simulates(tiny, kind):
    est = SurrogateEstimator(kind, n_members=2, epochs=1, retrain_epochs=1).fit(tiny)
    d = est.predict(tiny.x[:, 0], tiny.u[:, 0])
    assert d.shape == (2, 3, 8) and np.all(np.isfinite(d))
    sim = est.simulate(tiny.x[:, 0], tiny.u[:, :20])
    assert sim.shape == (2, 3, 21, 8)
    np.testing.assert_array_equal(sim[:, :, 0], np.broadcast_to(tiny.x[:, 0], (2, 3, 8)))
    w = est.surrogate_.weights
    if KINDS[kind].exact:
        assert w.masks is not None and w.nonzero(0.0).sum() < sum(m.size for m in w.masks)
    struct = est.architecture.structural_masks()
    if struct is not None:  # nothing outside the per-output blocks
        for weights, allowed in zip(w.weights, struct, strict=True):
            assert not np.any(weights[:, ~allowed])


def test_hybrid_adds_the_misspecified_physics(tiny):
    est = SurrogateEstimator("hybrid", n_members=1, epochs=1).fit(tiny)
    s = est.surrogate_
    x, u = tiny.x[:, 5], tiny.u[:, 5]
    nn = s.normalization.derivative(forward(s.weights, s.normalization.features(x, u)))
    np.testing.assert_allclose(est.predict(x, u), nn + rhs(x, u, PRIORS["wrong_liquidus"]), rtol=1e-12)


def test_prune_by_threshold_and_by_group():
    arch = Architecture(hidden=(8,), skip=True, blocks=8)
    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(1, a, b)) * m for (a, b), m in zip(arch.layer_shapes, arch.structural_masks(), strict=True)]
    ws[0][0, 3, :] = 1e-3  # input 3 reaches every block through tiny weights only ...
    ws[1][0, 3, :] = 1e-3  # ... and through tiny skip weights
    ws[0][0, 5, 2] = 0.5  # input 5 -> block 2 strongly
    w = EnsembleWeights(
        arch, tuple(ws), (np.zeros((1, 8)), np.zeros((1, 8))), tuple(m[None] for m in arch.structural_masks())
    )
    p = prune(w, threshold=1e-2, group_threshold=0.0)
    assert not p.weights[0][0, 3].any() and p.weights[0][0, 5, 2] == 0.5
    assert not p.masks[0][0, 3].any()
    grouped = prune(w, threshold=0.0, group_threshold=0.1)
    assert not grouped.weights[0][0, 3].any() and not grouped.weights[1][0, 3].any()
    assert grouped.weights[0][0, 5, 2] == 0.5
    # Kept weights are untouched and masked ones are exact zeros.
    np.testing.assert_array_equal(grouped.weights[0][grouped.masks[0]], w.weights[0][grouped.masks[0]])


def test_mean_and_spread_of_the_ensemble(tiny):
    est = SurrogateEstimator("l1", n_members=3, epochs=1).fit(tiny)
    runs = est.simulate(tiny.x[:, 0], tiny.u[:, :30])
    mean, spread = est.surrogate_.predict_with_uncertainty(tiny.x[:, 0], tiny.u[:, :30])
    np.testing.assert_allclose(mean, runs.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(spread, runs.std(axis=0), rtol=1e-12, atol=1e-12)
    assert np.all(spread[:, 0] < 1e-9) and np.all(spread[:, -1].max(axis=-1) > 1e-6)  # they agree at k = 0 only


def test_a_proximal_fit_keeps_its_zeros_as_the_pattern_and_debiasing_stays_inside_it(tiny):
    kw = {"n_members": 2, "epochs": 3, "lam": 3e-2, "lam_in": 3e-2, "lam_skip": 3e-2}
    plain = SurrogateEstimator("prox-inputskip", debias_epochs=0, **kw).fit(tiny)
    w = plain.surrogate_.weights
    assert w.masks is not None and len(plain.history_) == 1
    for weights, mask in zip(w.weights, w.masks, strict=True):
        assert np.array_equal(mask, weights != 0)
    assert 0 < w.nonzero(0.0).sum() < sum(m.size for m in w.masks)
    nonzeros = plain.history_[0].extra["nonzeros"]
    assert nonzeros.shape == (3, 2) and np.array_equal(nonzeros[-1], w.nonzero(0.0).sum(axis=1))
    debiased = SurrogateEstimator("prox-inputskip", debias_epochs=2, **kw).fit(tiny)
    d = debiased.surrogate_.weights
    assert len(debiased.history_) == 2
    for after, mask in zip(d.weights, w.masks, strict=True):
        assert np.all(after[~mask] == 0)  # nothing outside the pattern comes back
    assert not all(np.array_equal(a, b) for a, b in zip(w.weights, d.weights, strict=True))  # the values moved
    assert debiased.history_[1].penalty_history.max() == 0  # without the penalty
