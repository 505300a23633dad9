"""``alutwin simulate``: write the training and test sets of the published study (or any sizes) to a folder.

The command's parser is in :mod:`plant.commands`; this module holds what it runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from alutwin.cbuild import find_compiler
from alutwin.cli import CliError, command_output_dir, show_progress
from plant.datasets.fileformat import save_dataset
from plant.datasets.generation import generate
from plant.domain import Fault
from plant.simulator import MeasurementNoise, Trajectories

__all__ = ["require_engine"]


def require_engine(engine: str) -> None:
    """Refuse ``--engine compiled`` where there is no C compiler, in one line, before any work starts.

    Raises
    ------
    alutwin.cli.CliError
        ``engine`` is ``"compiled"`` and neither ``$CC``, ``cc`` nor ``gcc`` is found.
    """
    if engine == "compiled" and find_compiler() is None:
        raise CliError(
            "--engine compiled needs a C compiler ($CC, cc or gcc) and none was found; "
            "--engine numpy (or auto) runs without one"
        )


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
    require_engine(args.engine)
    out: Path = command_output_dir(args.out, "simulate-output")
    targets = {split: out / f"{split}.safetensors" for split, n in sizes.items() if n > 0}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        raise CliError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
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
            progress=show_progress(args),
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
        f"noise {'on' if noise else 'off'}; total {time.perf_counter() - t_all:.1f} s; output in {out}"
    )
    return 0
