"""Benchmark: the published training protocol for an ensemble of 10, vectorised vs one member after another.

Protocol: 40 "aprbs" trajectories of 5000 steps (200 000 samples), 13-20-20-20-20-8 ReLU, l1 (lambda = 1e-4),
Adam lr 1e-3, batch 128, 100 epochs, 10 members. Rows, side by side in one run:

1. torch, members one after another (the straightforward way: one autograd model per member);
2. torch, all members vectorised (batched matrix products, one autograd graph);
3. fused C kernel, all members vectorised (identification.training.fused).

Rows 1-2 are timed over ``--ref-epochs`` epochs and extrapolated linearly to 100 (the cost of an epoch is
constant: the same number of identical Adam steps); row 3 runs all 100 epochs. Validation: the one-step
MSE (standardised) on 10 held-out trajectories, for all rows after the same ``--ref-epochs`` epochs (equal
error: the trainers see the same batches from the same seeds), and for row 3 after 100 epochs.

Usage: ``python bench/train_ensemble.py [--ref-epochs 2] [--epochs 100]``; writes bench/results/train_ensemble.json.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import check_positive, load_average, machine, parser, write_results

from identification.data import fit_normalization, make_samples
from identification.network import Architecture, forward
from identification.regularizers import L1Penalty
from identification.training import TrainConfig, member_seeds, train_ensemble, train_ensemble_fast
from plant.datasets import generate

RESULTS = Path(__file__).resolve().parent / "results" / "train_ensemble.json"


def validation_mse(weights, z, y) -> float:
    """Mean over members of the one-step MSE in standardised units."""
    return float(np.mean((forward(weights, z) - y) ** 2))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON results and return them."""
    p = parser(__doc__, RESULTS)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--ref-epochs", type=int, default=2, help="epochs timed for the torch rows (extrapolated)")
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--train", type=int, default=40, help="training trajectories (default 40)")
    p.add_argument("--steps", type=int, default=5000, help="steps per trajectory (default 5000)")
    args = p.parse_args(argv)
    check_positive(p, args, "epochs", "ref_epochs", "members", "train", "steps")
    load_start = load_average()
    torch.set_num_threads(os.cpu_count() or 1)

    train, _ = generate(0, args.train, args.steps, split="train", progress=False)
    val, _ = generate(0, 10, args.steps, split="validation", progress=False)
    s_train, s_val = make_samples(train), make_samples(val)
    norm = fit_normalization(s_train, train.dt)
    z, y = norm.features(s_train.x, s_train.u), (s_train.dxdt - norm.target_mean) / norm.target_std
    zv, yv = norm.features(s_val.x, s_val.u), (s_val.dxdt - norm.target_mean) / norm.target_std
    arch = Architecture()
    reg = L1Penalty(lam=1e-4, lam_in=1e-4)
    seeds = member_seeds(0, args.members)
    ref_cfg = TrainConfig(epochs=args.ref_epochs)
    full_cfg = TrainConfig(epochs=args.epochs)
    scale = args.epochs / args.ref_epochs
    rows = []

    t = time.perf_counter()
    seq = [train_ensemble(arch, z, y, [s], ref_cfg, reg) for s in seeds]
    t_seq = time.perf_counter() - t
    val_seq = float(np.mean([validation_mse(r.weights, zv, yv) for r in seq]))
    rows.append(("torch, one member after another", t_seq * scale, True, val_seq, None))

    t = time.perf_counter()
    vec = train_ensemble(arch, z, y, seeds, ref_cfg, reg)
    t_vec = time.perf_counter() - t
    rows.append(("torch, vectorised", t_vec * scale, True, validation_mse(vec.weights, zv, yv), None))

    t = time.perf_counter()
    fast_ref = train_ensemble_fast(arch, z, y, seeds, ref_cfg, reg)
    t_fast_ref = time.perf_counter() - t
    t = time.perf_counter()
    fast = train_ensemble_fast(arch, z, y, seeds, full_cfg, reg, progress="fused kernel")
    t_fast = time.perf_counter() - t
    rows.append(
        (
            "fused C kernel, vectorised",
            t_fast,
            False,
            validation_mse(fast_ref.weights, zv, yv),
            validation_mse(fast.weights, zv, yv),
        )
    )

    base = rows[0][1]
    steps = args.epochs * -(-len(z) // 128)
    print(
        f"\nTraining an ensemble of {args.members}: {args.train} trajectories ({len(z)} samples), {args.epochs} epochs, batch 128"
    )
    print(
        f"{'trainer':<34} {'seconds':>9} {'speed-up':>9} {'ms/step':>8} {'val MSE @' + str(args.ref_epochs) + ' ep':>14} {'val MSE @' + str(args.epochs) + ' ep':>14}"
    )
    for name, sec, extrap, v_ref, v_full in rows:
        mark = "*" if extrap else " "
        full = f"{v_full:.4g}" if v_full is not None else "-"
        print(f"{name:<34} {sec:>8.1f}{mark} {base / sec:>8.1f}x {1e3 * sec / steps:>8.3f} {v_ref:>14.4g} {full:>14}")
    print(f"* timed over {args.ref_epochs} epochs and extrapolated to {args.epochs}")
    same = abs(rows[2][3] - rows[0][3]) / rows[0][3]
    print(
        f"validation MSE after {args.ref_epochs} epochs, fused kernel vs torch one-by-one: relative difference {same:.2e}"
    )
    result = {
        "benchmark": "train_ensemble",
        "machine": machine(
            load_start, numpy=np.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads()
        ),
        "protocol": {
            "members": args.members,
            "train_trajectories": args.train,
            "samples": len(z),
            "epochs": args.epochs,
            "batch": 128,
            "regularizer": "l1 1e-4",
        },
        "rows": [
            {
                "trainer": n,
                "seconds": s,
                "extrapolated_from_epochs": args.ref_epochs if e else None,
                "speedup_vs_one_by_one": base / s,
                "val_mse_at_ref_epochs": vr,
                "val_mse_at_full_epochs": vf,
            }
            for n, s, e, vr, vf in rows
        ],
        "fast_seconds_for_ref_epochs": t_fast_ref,
        "goals": {"speedup_at_least": 5.0, "seconds_at_most": 120.0},
        "met": {"speedup": base / t_fast >= 5.0, "under_2_min": t_fast <= 120.0},
    }
    write_results(result, args.out)
    return result


if __name__ == "__main__":
    main()
