"""The published identification study, reproduced and extended: ``alutwin study``.

Train ensembles of every model kind on 10, 20 and 40 "aprbs" trajectories, roll each member out open loop
over 100 test trajectories of 5000 steps, and score them as ``spec/learning.md`` prescribes. Results are
written incrementally to ``results.json`` (a re-run with ``--resume`` skips finished entries), then turned
into a markdown report with figures. The command's parser is in :mod:`identification.commands`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np
from tqdm.auto import tqdm

from alutwin.cli import CliError, command_output_dir, show_progress
from identification.estimator import KINDS, SurrogateEstimator
from identification.metrics import (
    fit_percent,
    jacobian_dependency,
    mean_pairwise_jaccard,
    nrmse,
    path_dependency,
    score_rollouts,
    structure_scores,
)
from identification.modelfile import save_model, training_provenance
from identification.report import write_report
from identification.surrogate import PRIORS, Surrogate
from identification.testsets import TEST_SETS, fault_free, make_test_set
from plant.datasets import generate
from plant.physics import rhs
from plant.simulator import Trajectories

__all__ = ["StudyConfig", "evaluate", "evaluate_rollouts", "prior_structure", "run_study", "save_trained"]


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study (the published protocol by default)."""

    out: Path
    sizes: tuple[int, ...] = (10, 20, 40)
    kinds: tuple[str, ...] = (
        "dense",
        "l1",
        "sparse",
        "inputskip",
        "sparse-inputskip",
        "prox-inputskip",
        "hybrid",
        "structured",
        "structured-hybrid",
    )
    n_members: int = 10
    epochs: int = 100
    n_test: int = 100
    n_steps: int = 5000
    seed: int = 0
    lambdas: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    sweep_members: int = 3
    sweep_size: int = 10
    retrain_epochs: int | None = None  # None: each kind's own
    test_sets: tuple[str, ...] = ("closed-loop", "outside-box", "current-ramps")  # beyond the training excitation
    resume: bool = False
    save_models: bool = True  # the ensembles of the largest training size go to out/models/<kind>/
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"unknown kind {k!r}; must be one of {sorted(KINDS)}")
        for t in self.test_sets:
            if t not in TEST_SETS or t == "aprbs":
                raise ValueError(f"unknown test set {t!r}; must be among {[n for n in TEST_SETS if n != 'aprbs']}")
        if not self.sizes or min(self.sizes) < 1 or self.n_test < 1 or self.n_steps < 2 or self.n_members < 1:
            raise ValueError("sizes, n_test, n_members must be positive and n_steps at least 2")

    @classmethod
    def quick(cls, out: Path) -> StudyConfig:
        """A tiny study for tests: minutes become seconds, every code path still runs."""
        return cls(
            out=out,
            sizes=(2, 3),
            kinds=("dense", "l1", "sparse", "hybrid", "structured"),
            n_members=2,
            epochs=2,
            n_test=2,
            n_steps=300,
            lambdas=(1e-4, 1e-3),
            sweep_members=2,
            sweep_size=2,
            retrain_epochs=1,
            test_sets=("closed-loop",),
            progress=False,
        )


def prior_structure(prior: str) -> np.ndarray:
    """Structural dependency ``(8, 13)`` of a physics prior (CasADi's Jacobian sparsity); all False for none."""
    params = PRIORS[prior]
    if params is None:
        return np.zeros((8, 13), dtype=bool)
    x, u = ca.SX.sym("x", 8), ca.SX.sym("u", 5)
    return np.array(ca.jacobian(rhs(x, u, params), ca.vertcat(x, u)).sparsity()).astype(bool)


def _rollouts(surrogate: Surrogate, test: Trajectories) -> tuple[np.ndarray, np.ndarray]:
    """Every member's free run from each test trajectory's initial state under its inputs, and the truth, both
    ``(M B, T + 1, 8)``."""
    sim = surrogate.simulate(test.x[:, 0], test.u)  # (M, B, T+1, 8)
    m, b = sim.shape[:2]
    truth = np.broadcast_to(test.x, (m, *test.x.shape)).reshape(m * b, *test.x.shape[1:])
    return sim.reshape(m * b, *sim.shape[2:]), truth


def evaluate_rollouts(surrogate: Surrogate, test: Trajectories) -> dict:
    """The rollout scores alone (window medians and quartiles, divergences) of a surrogate on test trajectories."""
    flat, truth = _rollouts(surrogate, test)
    return dict(score_rollouts(flat, truth, surrogate.normalization.state_std).summary())


def evaluate(surrogate: Surrogate, test: Trajectories, z_probe: np.ndarray, exact: bool) -> dict:
    """Score a surrogate on test trajectories: AN-RFMSE windows, divergence, NRMSE, FIT%, sparsity, structure."""
    sigma = surrogate.normalization.state_std
    flat, truth = _rollouts(surrogate, test)
    scores = score_rollouts(flat, truth, sigma)
    ok = scores.diverged_at < 0
    curve = scores.curve[ok]
    stride = max(1, curve.shape[1] // 500)
    out: dict[str, Any] = scores.summary()
    out["median_curve"] = np.median(curve, axis=0)[::stride].tolist() if curve.size else []
    out["curve_stride"] = stride
    out["nrmse"] = nrmse(flat[ok], truth[ok], sigma).tolist() if ok.any() else [float("nan")] * 8
    out["fit_percent"] = fit_percent(flat[ok], truth[ok]).tolist() if ok.any() else [float("nan")] * 8
    w = surrogate.weights
    out["nonzero_1e-2"] = float(w.nonzero(1e-2).sum(axis=1).mean())
    out["nonzero_exact"] = float(w.nonzero(0.0).sum(axis=1).mean())
    out["nonzero_per_layer"] = w.nonzero(0.0 if exact else 1e-2).mean(axis=0).tolist()
    prior = prior_structure(surrogate.prior)
    path = path_dependency(w, 0.0 if exact else 1e-2) | prior
    jac, _ = jacobian_dependency(w, z_probe)
    jac = jac | prior
    out["structure_path"] = structure_scores(path.mean(axis=0) >= 0.5)
    out["structure_jacobian"] = structure_scores(jac.mean(axis=0) >= 0.5)
    out["f1_path_members"] = [structure_scores(d)["f1"] for d in path]
    out["f1_jacobian_members"] = [structure_scores(d)["f1"] for d in jac]
    out["jaccard_path"] = mean_pairwise_jaccard(path)
    out["jaccard_jacobian"] = mean_pairwise_jaccard(jac)
    out["dependency_fraction"] = (jac.mean(axis=0)).tolist()
    out["dependency_fraction_path"] = (path.mean(axis=0)).tolist()
    return out


def _save(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(path)


def run_study(cfg: StudyConfig) -> dict:
    """Run the study (or resume it) and write ``results.json``, figures and ``README.md`` into ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results: dict = json.loads(res_path.read_text()) if cfg.resume and res_path.is_file() else {}
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    results["machine"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    runs = results.setdefault("runs", {})
    t0 = time.perf_counter()
    train_all, _ = generate(cfg.seed, max(cfg.sizes), cfg.n_steps, split="train", progress=cfg.progress)
    test_all, _ = generate(
        cfg.seed, cfg.n_test + max(10, cfg.n_test // 5), cfg.n_steps, split="test", progress=cfg.progress
    )
    test = fault_free(test_all, cfg.n_test)
    others = {name: make_test_set(name, cfg.seed, cfg.n_test, cfg.n_steps) for name in cfg.test_sets}
    results["data"] = {
        "train_faulted": int(np.sum(train_all.fault_step >= 0)),
        "test_drawn": int(test_all.n_traj),
        "test_faulted_dropped": int(np.sum(test_all.fault_step >= 0)),
        "seconds": time.perf_counter() - t0,
    }
    jobs = [(n, k) for n in cfg.sizes for k in cfg.kinds]
    sweep = [(cfg.sweep_size, lam) for lam in cfg.lambdas]
    bar = tqdm(total=len(jobs) + len(sweep), desc="study", disable=not cfg.progress or None, unit="model")
    for n, kind in jobs:
        key = f"{kind}@{n}"
        if key in runs:
            bar.update()
            continue
        train = _subset(train_all, n)
        overrides: dict[str, Any] = (
            {} if cfg.retrain_epochs is None or not KINDS[kind].exact else {"retrain_epochs": cfg.retrain_epochs}
        )
        est = SurrogateEstimator(
            kind, n_members=cfg.n_members, epochs=cfg.epochs, seed=cfg.seed, progress=cfg.progress, **overrides
        )
        est.fit(train)
        z_probe = _probe(est, train)
        t1 = time.perf_counter()
        r = evaluate(est.surrogate_, test, z_probe, est.spec.exact)
        if n == max(cfg.sizes):  # the same models on the sets beyond the training excitation
            r["test_sets"] = {name: evaluate_rollouts(est.surrogate_, data) for name, data in others.items()}
        r.update(
            kind=kind,
            n_train=n,
            train_seconds=est.train_seconds_,
            eval_seconds=time.perf_counter() - t1,
            samples=est.n_samples_,
        )
        if n == max(cfg.sizes) and cfg.save_models:
            save_trained(est, train, r, out / "models" / kind, cfg.seed)
        runs[key] = r
        _save(results, res_path)
        bar.update()
    sweeps = results.setdefault("lambda_sweep", {})
    for n, lam in sweep:
        key = f"{lam:g}"
        if key in sweeps:
            bar.update()
            continue
        est = SurrogateEstimator(
            "l1", n_members=cfg.sweep_members, epochs=cfg.epochs, seed=cfg.seed, lam=lam, lam_in=lam
        )
        est.fit(_subset(train_all, n))
        r = evaluate(est.surrogate_, test, _probe(est, _subset(train_all, n)), False)
        sweeps[key] = {k: r[k] for k in ("nonzero_1e-2", "5000dT_median", "diverged", "rollouts")} | {
            "lambda": lam,
            "n_train": n,
        }
        _save(results, res_path)
        bar.update()
    bar.close()
    results["seconds_total"] = results.get("seconds_total", 0.0) + time.perf_counter() - t0
    _save(results, res_path)

    write_report(results, out)
    return results


def save_trained(est: SurrogateEstimator, train: Trajectories, scores: dict, path: Path, seed: int) -> Path:
    """Save a fitted estimator's surrogate as a model file, with its training data and scores as provenance."""
    provenance = training_provenance(train, seed, epochs=est.config.epochs, members=est.n_members, kind=est.kind)
    keys = ("100dT_median", "2500dT_median", "5000dT_median", "diverged", "rollouts", "nonzero_exact")
    metrics = {k: scores[k] for k in keys if k in scores}
    metrics["structure_f1_jacobian"] = scores.get("structure_jacobian", {}).get("f1")
    return save_model(path, est.surrogate_, kind=est.kind, provenance=provenance, metrics=metrics, overwrite=True)


def _subset(traj: Trajectories, n: int) -> Trajectories:
    return Trajectories(traj.x[:n], traj.u[:n], traj.fault_step[:n], traj.fault_code[:n], None, traj.dt)


def _probe(est: SurrogateEstimator, train: Trajectories, n: int = 2000) -> np.ndarray:
    """Standardised training inputs spread over the whole set, for the data Jacobian."""
    x = train.x[:, :-1].reshape(-1, 8)
    u = train.u.reshape(-1, 5)
    idx = np.linspace(0, x.shape[0] - 1, min(n, x.shape[0])).astype(int)
    return est.normalization_.features(x[idx], u[idx])


def _run(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise CliError("--resume continues an earlier study: give its folder with --out")
    placeholder = Path(args.out or ".")  # the sizes are checked before any folder is made
    cfg = StudyConfig.quick(placeholder) if args.quick else StudyConfig(out=placeholder)
    changes = {
        "sizes": tuple(args.sizes) if args.sizes else None,
        "kinds": tuple(args.kinds) if args.kinds else None,
        "n_members": args.members,
        "epochs": args.epochs,
        "n_test": args.test,
        "n_steps": args.steps,
        "test_sets": tuple(args.test_sets) if args.test_sets is not None else None,
    }
    cfg = replace(
        cfg,
        seed=args.seed,
        resume=args.resume,
        progress=show_progress(args) and cfg.progress,
        **{k: v for k, v in changes.items() if v is not None},
    )
    cfg = replace(cfg, out=command_output_dir(args.out, "study-output"))
    t = time.perf_counter()
    results = run_study(cfg)
    print(
        f"study: {len(results['runs'])} ensembles in {time.perf_counter() - t:.0f} s; report: {cfg.out / 'README.md'}"
    )
    for key, r in results["runs"].items():
        print(
            f"  {key:>16}: 5000dT median {r['5000dT_median']:.3g}, diverged {r['diverged']}/{r['rollouts']}, "
            f"non-zero {r['nonzero_exact']:.0f} (>1e-2: {r['nonzero_1e-2']:.0f}), F1 {r['structure_jacobian']['f1']:.2f}"
        )
    return 0
