"""``alutwin simulate``: write the training and test sets of the published study (or any sizes) to a folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from alutwin.cli import CliError
from plant.datasets.fileformat import save_dataset
from plant.datasets.generation import DEFAULT_ENGINE, PUBLISHED_SIZES, generate
from plant.domain import Fault
from plant.excitation import EXCITATIONS
from plant.simulator import ENGINES, MeasurementNoise, Trajectories

__all__ = ["register_cli"]


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return v


def _positive(text: str) -> int:
    v = _count(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return v


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin simulate``: write ``DIR/train.safetensors`` and ``DIR/test.safetensors``."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate identification data sets (train and test) to safetensors files",
        description=(
            "Simulate the training and test sets of the published study (40 and 100 trajectories of 5000 "
            "steps of 10 s by default) and write OUT/train.safetensors and OUT/test.safetensors. The test set "
            "draws from an independent stream of the same seed. A size of 0 skips that set."
        ),
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--train", type=_count, default=PUBLISHED_SIZES["train"], metavar="N", help="training trajectories")
    p.add_argument("--test", type=_count, default=PUBLISHED_SIZES["test"], metavar="N", help="test trajectories")
    p.add_argument(
        "--steps", type=_positive, default=PUBLISHED_SIZES["steps"], metavar="T", help="steps per trajectory"
    )
    p.add_argument("--seed", type=_count, default=0, help="seed (non-negative integer)")
    p.add_argument("--excitation", choices=sorted(EXCITATIONS), default="aprbs", help="excitation (default aprbs)")
    p.add_argument("--noise", action="store_true", help="add measurement noise y (2 degC on the bath temperature)")
    p.add_argument("--engine", choices=sorted(ENGINES), default=DEFAULT_ENGINE, help="simulation engine")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_simulate)


def _describe_faults(traj: Trajectories, dt: float) -> str:
    idx = np.flatnonzero(traj.fault_step != -1)
    if idx.size == 0:
        return "faults: none"
    parts = [
        f"#{i} at step {int(traj.fault_step[i])} ({traj.fault_step[i] * dt / 3600:.1f} h): "
        f"{Fault(int(traj.fault_code[i])).describe()}"
        for i in idx[:5]
    ]
    more = f"; and {idx.size - 5} more" if idx.size > 5 else ""
    return f"faults: {idx.size} of {traj.n_traj} trajectories stopped early ({'; '.join(parts)}{more})"


def _run_simulate(args: argparse.Namespace) -> int:
    sizes = {"train": args.train, "test": args.test}
    if not any(sizes.values()):
        raise CliError("--train and --test are both 0: nothing to simulate")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    targets = {split: out / f"{split}.safetensors" for split, n in sizes.items() if n > 0}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        raise CliError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    noise = MeasurementNoise() if args.noise else None
    t_all = time.perf_counter()
    for split, path in targets.items():
        t0 = time.perf_counter()
        traj, meta = generate(
            args.seed,
            sizes[split],
            args.steps,
            args.excitation,
            noise,
            args.engine,
            progress=not args.no_progress,
            split=split,
        )
        save_dataset(path, traj, meta)
        mb = path.stat().st_size / 1e6
        print(
            f"{split:5s} {meta.n_traj:4d} x {meta.n_steps} steps -> {path} ({mb:.1f} MB, "
            f"{time.perf_counter() - t0:.1f} s); {_describe_faults(traj, meta.dt)}"
        )
    print(
        f"seed {args.seed}, excitation {args.excitation}, engine {args.engine}, "
        f"noise {'on' if noise else 'off'}; total {time.perf_counter() - t_all:.1f} s"
    )
    return 0
