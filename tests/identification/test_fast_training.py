"""The fused C trainer against the torch reference trainer (oracle), and its own guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import identification.training.fused as fused
from alutwin.cbuild import BuildError
from identification.network import Architecture, EnsembleWeights
from identification.regularizers import GroupInputPenalty, L1Penalty, NoPenalty, Regularizer
from identification.training import TrainConfig, fast_training_available, train_ensemble, train_ensemble_fast

pytestmark = pytest.mark.skipif(not fast_training_available("float64"), reason="no C compiler for the kernel")

SEEDS = [11, 22, 33]
# S = 301 with batch 32 leaves a last minibatch of 13 samples: neither a whole SIMD vector of floats nor doubles.
F64 = TrainConfig(epochs=3, batch_size=32, dtype="float64")
F32 = TrainConfig(epochs=3, batch_size=32, dtype="float32")
L1 = L1Penalty(lam=1e-2, lam_in=2e-2, lam_skip=3e-2)
REGULARIZERS = {"none": NoPenalty(), "l1": L1, "group": GroupInputPenalty(lam_group=2e-2, l1=L1)}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(301, 5))  # (S, n_in)
    y = np.tanh(x @ rng.normal(size=(5, 3))) + 0.1 * rng.normal(size=(301, 3))  # (S, n_out)
    return x, y


def random_masks(arch: Architecture, m: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((m, a, b)) > 0.3 for a, b in arch.layer_shapes]


def assert_same_training(ref, fast, rtol: float) -> None:
    """Weights and biases agree to ``rtol`` of each layer's scale; loss and penalty histories to ``rtol``."""
    for name, a_all, b_all in (
        ("weights", ref.weights.weights, fast.weights.weights),
        ("biases", ref.weights.biases, fast.weights.biases),
    ):
        for i, (a, b) in enumerate(zip(a_all, b_all, strict=True)):
            scale = max(float(np.max(np.abs(a))), 1e-3)
            np.testing.assert_allclose(b, a, rtol=0, atol=rtol * scale, err_msg=f"{name} of layer {i}")
    np.testing.assert_allclose(fast.loss_history, ref.loss_history, rtol=rtol)
    np.testing.assert_allclose(fast.penalty_history, ref.penalty_history, rtol=rtol, atol=1e-300)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("reg", sorted(REGULARIZERS))
def test_matches_torch_reference_float64(data, skip: bool, reg: str) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=skip)
    ref = train_ensemble(arch, x, y, SEEDS, F64, REGULARIZERS[reg])
    fast = train_ensemble_fast(arch, x, y, SEEDS, F64, REGULARIZERS[reg])
    assert fast.loss_history.shape == (3, 3) and fast.penalty_history.shape == (3, 3)
    assert_same_training(ref, fast, 1e-9)
    if reg != "none":
        assert np.all(fast.penalty_history > 0)


@pytest.mark.parametrize("skip", [False, True])
def test_matches_reference_with_masks_and_warm_start(data, skip: bool) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=skip)
    reg = REGULARIZERS["group"]
    masks = random_masks(arch, 3, seed=1)
    start = train_ensemble(arch, x, y, SEEDS, F64, reg).weights
    for init, mk in ((None, masks), (start, None), (start, masks)):
        ref = train_ensemble(arch, x, y, SEEDS, F64, reg, init=init, masks=mk)
        fast = train_ensemble_fast(arch, x, y, SEEDS, F64, reg, init=init, masks=mk)
        assert_same_training(ref, fast, 1e-9)
        assert (fast.weights.masks is None) == (mk is None)


@pytest.mark.parametrize(
    ("hidden", "skip", "batch"), [((), True, 32), ((7,), False, 30), ((4, 6, 5), True, 1000), ((6, 5), False, 1)]
)
def test_matches_reference_other_shapes(data, hidden: tuple[int, ...], skip: bool, batch: int) -> None:
    x, y = data
    arch = Architecture(5, hidden, 3, skip=skip)
    cfg = TrainConfig(epochs=2 if batch > 1 else 1, batch_size=batch, dtype="float64")
    x, y = (x[:40], y[:40]) if batch == 1 else (x, y)
    ref = train_ensemble(arch, x, y, SEEDS[:2], cfg, REGULARIZERS["group"])
    fast = train_ensemble_fast(arch, x, y, SEEDS[:2], cfg, REGULARIZERS["group"])
    assert_same_training(ref, fast, 1e-9)


def test_float32_close_to_reference(data) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=True)
    ref = train_ensemble(arch, x, y, SEEDS, F32, L1)
    fast = train_ensemble_fast(arch, x, y, SEEDS, F32, L1)
    assert fast.weights.weights[0].dtype == np.float64
    assert_same_training(ref, fast, 1e-4)


def test_members_are_independent_of_the_ensemble(data) -> None:
    """Training M members at once gives bit for bit what training each alone with its seed gives."""
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=True)
    together = train_ensemble_fast(arch, x, y, SEEDS, F32, REGULARIZERS["group"])
    for i, seed in enumerate(SEEDS):
        alone = train_ensemble_fast(arch, x, y, [seed], F32, REGULARIZERS["group"])
        for a, b in zip(together.weights.member(i).weights, alone.weights.weights, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(together.weights.member(i).biases, alone.weights.biases, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(together.loss_history[:, i], alone.loss_history[:, 0])
        np.testing.assert_array_equal(together.penalty_history[:, i], alone.penalty_history[:, 0])


def test_masked_weights_stay_exactly_zero(data) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=True)
    masks = random_masks(arch, 3, seed=2)
    # a warm start with non-zero weights everywhere: the mask must zero them and keep them zero
    rng = np.random.default_rng(3)
    init = EnsembleWeights(
        arch,
        tuple(rng.normal(size=(3, a, b)) for a, b in arch.layer_shapes),
        tuple(rng.normal(size=(3, b)) for _, b in arch.layer_shapes),
    )
    for cfg in (F32, F64):
        res = train_ensemble_fast(arch, x, y, SEEDS, cfg, L1, init=init, masks=masks)
        for w, w0, mk in zip(res.weights.weights, init.weights, masks, strict=True):
            assert np.all(w[~mk] == 0.0)
            assert np.all(w[mk] != w0[mk])  # the others trained


def test_deterministic_and_thread_count_independent(data) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3)
    runs = [
        train_ensemble_fast(arch, x, y, SEEDS, TrainConfig(epochs=2, batch_size=32, threads=t), L1, progress=bar)
        for t, bar in ((1, False), (2, "fast"), (3, False), (2, False))
    ]
    for other in runs[1:]:
        for a, b in zip(
            runs[0].weights.weights + runs[0].weights.biases, other.weights.weights + other.weights.biases, strict=True
        ):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(runs[0].loss_history, other.loss_history)
    assert runs[0].loss_history[-1].mean() < runs[0].loss_history[0].mean()


def test_trainers_leave_torch_threads_to_the_caller(data, monkeypatch) -> None:
    """A process-wide setting: only entry points set it. ``TrainConfig.threads`` is the fused kernel's own."""

    def forbidden(n: int) -> None:
        raise AssertionError(f"torch.set_num_threads({n}) called by the library")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    x, y = data
    arch = Architecture(5, (6,), 3)
    cfg = TrainConfig(epochs=1, batch_size=64, threads=1)
    ref = train_ensemble(arch, x, y, SEEDS[:2], cfg, L1)
    fast = train_ensemble_fast(arch, x, y, SEEDS[:2], cfg, L1)
    assert fast.extra["threads"] == 1 and np.all(np.isfinite(ref.loss_history))
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            TrainConfig(threads=bad)


class _Custom(Regularizer):
    def penalty(self, weights, arch):
        return weights[0].abs().sum(dim=(1, 2))


def test_bad_input(data) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3)
    cfg = TrainConfig(epochs=1, batch_size=32)
    bad_x = x.copy()
    bad_x[7, 2] = np.nan
    with pytest.raises(ValueError, match="features must be"):
        train_ensemble_fast(arch, x[:, :4], y, SEEDS, cfg)
    with pytest.raises(ValueError, match="targets"):
        train_ensemble_fast(arch, x, y[:-1], SEEDS, cfg)
    with pytest.raises(ValueError, match="finite"):
        train_ensemble_fast(arch, bad_x, y, SEEDS, cfg)
    with pytest.raises(ValueError, match="seed"):
        train_ensemble_fast(arch, x, y, [], cfg)
    with pytest.raises(ValueError, match="mask 1 must have shape"):
        masks = random_masks(arch, 3, seed=0)
        masks[1] = masks[1][:, :, :-1]
        train_ensemble_fast(arch, x, y, SEEDS, cfg, masks=masks)
    with pytest.raises(ValueError, match="init weights"):
        init = train_ensemble_fast(arch, x, y, SEEDS[:2], cfg).weights
        train_ensemble_fast(arch, x, y, SEEDS, cfg, init=init)
    with pytest.raises(ValueError, match="not supported by the fast trainer"):
        train_ensemble_fast(arch, x, y, SEEDS, cfg, regularizer=_Custom())


def test_without_a_compiler_the_answer_is_cached_and_training_refused(data, tmp_path, monkeypatch) -> None:
    """No compiler is looked for once per compiler found (here: none), not on every call; the trainer says why."""
    builds = []

    def counting_build(*args, **kwargs):
        builds.append(args[1])
        return real_build(*args, **kwargs)

    real_build = fused.build_shared_library
    monkeypatch.setattr(fused, "build_shared_library", counting_build)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert not fast_training_available("float32")
    tried = len(builds)
    assert tried <= 1  # 0 if an earlier test of this process already found no compiler
    assert not fast_training_available("float32")
    x, y = data
    with pytest.raises(BuildError, match="no C compiler"):
        train_ensemble_fast(Architecture(5, (6,), 3), x, y, SEEDS[:1], TrainConfig(epochs=1))
    assert len(builds) == tried  # the failure was remembered
    monkeypatch.undo()
    assert fast_training_available("float32")  # the compiler found again: the library it built before


# -- proximal l1 (exact zeros during training) ------------------------------------------------------------------

PROX = L1Penalty(lam=1e-2, lam_in=2e-2, lam_skip=3e-2, proximal=True)


def _exact_zeros(result) -> int:
    return sum(int(np.sum(w == 0)) for w in result.weights.weights)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("group", [False, True])
def test_proximal_l1_matches_the_reference_and_makes_exact_zeros(data, skip: bool, group: bool) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=skip)
    reg: Regularizer = GroupInputPenalty(lam_group=2e-2, l1=PROX) if group else PROX
    cfg = TrainConfig(epochs=6, batch_size=32, dtype="float64")
    ref = train_ensemble(arch, x, y, SEEDS, cfg, reg)
    fast = train_ensemble_fast(arch, x, y, SEEDS, cfg, reg)
    assert_same_training(ref, fast, 1e-9)
    # the zeros are the same weights in both, and counted per epoch by both trainers
    for a, b in zip(ref.weights.weights, fast.weights.weights, strict=True):
        assert np.array_equal(a == 0, b == 0)
    assert np.array_equal(ref.extra["nonzeros"], fast.extra["nonzeros"])
    final = sum(np.count_nonzero(w, axis=(1, 2)) for w in fast.weights.weights)
    assert np.array_equal(fast.extra["nonzeros"][-1], final)
    # a plain l1 (subgradient) leaves no exact zero; the proximal one does
    plain = train_ensemble_fast(arch, x, y, SEEDS, cfg, L1Penalty(lam=1e-2, lam_in=2e-2, lam_skip=3e-2))
    assert _exact_zeros(plain) == 0 and _exact_zeros(fast) > 0
    assert np.all(plain.extra["nonzeros"] == arch.n_weights)
    # the penalty recorded is the full one (its l1 part included), as for the plain penalty
    assert np.all(fast.penalty_history > 0)


def test_proximal_l1_in_float32_agrees_with_the_reference_to_float32_rounding(data) -> None:
    x, y = data
    arch = Architecture(5, (6, 5), 3, skip=True)
    ref = train_ensemble(arch, x, y, SEEDS, F32, PROX)
    fast = train_ensemble_fast(arch, x, y, SEEDS, F32, PROX)
    # float32 summation orders differ: weights agree to 1e-4 of each layer's scale; a weight at the threshold's
    # edge may land on either side, so at most 2 % of the zeros may differ
    for a, b in zip(ref.weights.weights, fast.weights.weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.max(np.abs(a)))
        assert np.mean((a == 0) != (b == 0)) <= 0.02


def test_a_zero_weight_stays_zero_while_its_gradient_is_below_lam(data) -> None:
    # with a huge lam every weight is cut to zero within the first steps (each shrinks by lr lam / |g| per step)
    # and never comes back: a weight at zero moves only when its gradient's running mean exceeds lam
    x, y = data
    arch = Architecture(5, (6,), 3)
    cfg = TrainConfig(epochs=2, batch_size=32, dtype="float64")
    result = train_ensemble_fast(arch, x, y, SEEDS, cfg, L1Penalty(lam=1e3, lam_in=1e3, proximal=True))
    assert all(np.all(w == 0) for w in result.weights.weights)
    assert np.all(result.extra["nonzeros"] == 0)
    assert np.all(np.isfinite(result.loss_history))


def test_proximal_lams_follow_the_penalty_terms() -> None:
    arch = Architecture(5, (6, 4), 3, skip=True)
    lams = PROX.weight_lams(arch)
    assert [lam.shape for lam in lams] == list(arch.layer_shapes)
    assert np.all(lams[0] == 2e-2) and np.all(lams[1] == 1e-2)
    k = arch.n_skip_rows
    assert np.all(lams[-1][:k] == 3e-2) and np.all(lams[-1][k:] == 1e-2)
    # the penalty is exactly the sum of lam |w|
    ws = [torch.randn(2, a, b, dtype=torch.float64) for a, b in arch.layer_shapes]
    by_lams = sum((torch.tensor(lam) * w.abs()).sum(dim=(1, 2)) for lam, w in zip(lams, ws, strict=True))
    torch.testing.assert_close(PROX.penalty(ws, arch), by_lams, rtol=1e-12, atol=0)
    no_hidden = Architecture(5, (), 3)
    [both] = PROX.weight_lams(no_hidden)
    assert np.all(both == 2e-2 + 1e-2)
    assert L1.proximal_lams(arch) is None and NoPenalty().proximal_lams(arch) is None


@pytest.mark.parametrize("proximal", [False, True])
def test_group_lasso_per_input_and_block_matches_the_reference(data, proximal: bool) -> None:
    # per-output sub-networks (blocks = n_out): the groups are (input, block), in both trainers
    x, y = data
    arch = Architecture(5, (6, 6), 3, skip=True, blocks=3)
    masks = [np.broadcast_to(s, (3, *s.shape)).copy() for s in arch.structural_masks()]
    l1 = L1Penalty(lam=1e-3, lam_in=1e-3, lam_skip=1e-3, proximal=proximal)
    reg = GroupInputPenalty(lam_group=1.0 if proximal else 5e-2, l1=l1, proximal=proximal)
    cfg = TrainConfig(epochs=6, batch_size=32, dtype="float64")
    ref = train_ensemble(arch, x, y, SEEDS, cfg, reg, masks=masks)
    fast = train_ensemble_fast(arch, x, y, SEEDS, cfg, reg, masks=masks)
    assert_same_training(ref, fast, 1e-9)
    if proximal:  # whole (input, block) groups are exact zeros, the same in both
        first = fast.weights.weights[0].reshape(3, 5, 3, 2)
        dead = np.all(first == 0, axis=3)
        assert (
            dead.any()
            and not dead.all()
            and np.array_equal(dead, np.all(ref.weights.weights[0].reshape(3, 5, 3, 2) == 0, axis=3))
        )
        skip = fast.weights.weights[-1][:, :5]  # (M, n_in, n_out): input j -> output b directly
        assert np.all(skip[dead] == 0)
