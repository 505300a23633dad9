"""``alutwin fleet fit``: fit or re-fit the ensemble of every cell of a potline as Ray tasks, and register each
result in the twin as its own model (``cell-000``, ``cell-001``...).

Each cell trains on its own data set, drawn with its own seed: cell ``i`` of base seed ``s`` uses
``numpy.random.SeedSequence([s, i]).generate_state(1)[0]`` (:func:`cell_seed`) for the data set and the
ensemble, so a cell's model depends on ``(s, i)`` and the sizes only, never on the other cells, on the order in
which the tasks finish or on the process they run in. A cell's work (:func:`fit_cell`) is pure and deterministic:
the weights of a Ray fit are bit-identical to those of the same cells fitted one after another
(``sequential=True``) on the same type of CPU; the manifests differ only in their creation time.

Ray is optional (the ``fleet`` extra) and imported only when a fit runs on it. Example::

    config = FleetFitConfig(cells=4, members=2, epochs=5, n_traj=4, n_steps=300)
    with TwinClient("127.0.0.1:50061", token=token) as twin:
        results = fit_fleet(config, publish=twin_publisher(twin))      # a local Ray on this machine's CPUs
    [r.name for r in results if not r.ok]                                # the cells that failed
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm.auto import tqdm

from alutwin.cli import CliError, command_output_dir, show_progress
from alutwin.fileio import fsync_dir, write_atomic
from apps.fleet import cell_name
from identification.estimator import SurrogateEstimator
from identification.kinds import KINDS
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, model_to_bytes, training_provenance
from identification.training import torch_threads
from plant.datasets.generation import generate
from twin.client import TwinClient

__all__ = [
    "CONFIG_FLAGS",
    "RAY_MISSING",
    "CellResult",
    "FleetFitConfig",
    "cell_name",
    "cell_seed",
    "fit_cell",
    "fit_fleet",
    "folder_publisher",
    "build_config",
    "ray_available",
    "twin_publisher",
]

log = logging.getLogger(__name__)

RAY_MISSING = (
    "alutwin fleet fit needs Ray: pip install 'alutwin[fleet]' (or run the cells one after another with --sequential)"
)
"""What a fit on Ray says where Ray is not installed."""

ModelFiles = tuple[bytes, bytes]
"""A model's two files: ``(manifest.json, weights.safetensors)`` bytes."""

Publisher = Callable[[str, ModelFiles], str]
"""Called with a model name and its files; returns a short note of where they went."""


def _whole(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"FleetFitConfig.{name} must be an integer of at least {least}, got {value!r}")


@dataclass(frozen=True)
class FleetFitConfig:
    """What ``alutwin fleet fit`` fits: cells ``0 .. cells - 1``, each an ensemble trained on its own data set.

    Parameters
    ----------
    cells : int
        How many cells (models ``cell-000`` ...).
    members : int
        Ensemble size per cell (default 10, the published protocol's).
    epochs : int
        Training epochs (default 100).
    retrain_epochs : int or None
        Epochs of each re-training after a pruning round (None: the kind's own, 20 for ``sparse-inputskip``).
    n_traj, n_steps : int
        Training trajectories per cell and steps per trajectory ("aprbs" excitation; default 40 x 5000).
    kind : str
        A name of :data:`identification.kinds.KINDS` (default ``sparse-inputskip``, the kind the twin serves).
    seed : int
        Base seed; cell ``i`` uses :func:`cell_seed` ``(seed, i)``.
    threads : int
        CPUs per cell: the Ray task's ``num_cpus``, the fused kernel's threads (members are spread over them) and
        torch's threads while the cell trains. The weights do not depend on it.

    Raises
    ------
    ValueError
        A count below its minimum, a negative seed or an unknown kind (naming the field and the value).
    """

    cells: int
    members: int = 10
    epochs: int = 100
    retrain_epochs: int | None = None
    n_traj: int = 40
    n_steps: int = 5000
    kind: str = "sparse-inputskip"
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("cells", "members", "epochs", "n_traj", "threads"):
            _whole(name, getattr(self, name), 1)
        _whole("n_steps", self.n_steps, 2)
        _whole("seed", self.seed, 0)
        if self.retrain_epochs is not None:
            _whole("retrain_epochs", self.retrain_epochs, 0)
        if self.kind not in KINDS:
            raise ValueError(f"FleetFitConfig.kind: unknown kind {self.kind!r}; must be one of {sorted(KINDS)}")


@dataclass(frozen=True)
class CellResult:
    """One cell's outcome: its model files (None when it failed) or the error, and the seconds its fit took."""

    cell: int
    name: str
    seconds: float
    files: ModelFiles | None = None
    error: str | None = None
    note: str = ""  # where the model went (the publisher's note)

    @property
    def ok(self) -> bool:
        return self.error is None


def cell_seed(seed: int, cell: int) -> int:
    """The seed of cell ``cell`` under base seed ``seed``: ``SeedSequence([seed, cell])``'s first 32-bit word."""
    return int(np.random.SeedSequence([seed, cell]).generate_state(1)[0])


def fit_cell(cell: int, config: FleetFitConfig) -> ModelFiles:
    """Fit cell ``cell``'s ensemble on its own data set and return the model's two files as bytes.

    Deterministic: the same ``(cell, config)`` gives the same weights bytes whenever it runs, in whichever process,
    on one type of CPU (the fused kernel is built for the host CPU); the manifest differs only in its ``created``
    time. torch's thread count is the caller's (:func:`fit_fleet` sets it per cell).

    Returns
    -------
    ``(manifest.json, weights.safetensors)`` bytes, as the twin's RegisterModel takes them.

    Raises
    ------
    ValueError
        ``cell`` is not in ``0 .. config.cells - 1``.
    """
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or not 0 <= cell < config.cells:
        raise ValueError(f"cell must be an integer in 0..{config.cells - 1}, got {cell!r}")
    seed = cell_seed(config.seed, int(cell))
    train, _ = generate(seed, config.n_traj, config.n_steps, split="train", progress=False)
    overrides: dict[str, Any] = {} if config.retrain_epochs is None else {"retrain_epochs": config.retrain_epochs}
    est = SurrogateEstimator(
        config.kind, n_members=config.members, epochs=config.epochs, seed=seed, progress=False, **overrides
    )
    est.config = replace(est.config, threads=config.threads)  # the fused kernel's threads (same weights)
    est.fit(train)
    provenance = training_provenance(train, seed, epochs=config.epochs, members=config.members, kind=config.kind)
    provenance["fleet"] = {"cell": int(cell), "base_seed": config.seed, "cell_seed": seed}
    return model_to_bytes(est.surrogate_, kind=config.kind, provenance=provenance)


def _cell_task(cell: int, config: FleetFitConfig) -> tuple[bytes, bytes, float]:
    """One cell as a task (a Ray worker's or this process's): the files and the seconds the fit took."""
    t = time.perf_counter()
    with torch_threads(config.threads):
        manifest, weights = fit_cell(cell, config)
    return manifest, weights, time.perf_counter() - t


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a Ray task error wraps the task's own exception
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or '(no message)'}"


def ray_available() -> bool:
    """Whether Ray is installed (the ``fleet`` extra)."""
    return importlib.util.find_spec("ray") is not None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def fit_fleet(
    config: FleetFitConfig,
    *,
    address: str | None = None,
    sequential: bool = False,
    publish: Publisher | None = None,
    on_cell: Callable[[CellResult], None] | None = None,
    num_cpus: int | None = None,
) -> list[CellResult]:
    """Fit every cell of ``config``: as Ray tasks, or one after another in this process.

    Parameters
    ----------
    config : FleetFitConfig
        The cells and what to fit.
    address : str, optional
        A Ray cluster to join (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``); None: a local one started here
        (and stopped at the end). A Ray already started in this process is used as it is, and left running.
    sequential : bool
        Fit the cells one after another in this process, without Ray (the same results).
    publish : callable, optional
        ``publish(name, files) -> note``, called here for each fitted cell as its result arrives (e.g.
        :func:`twin_publisher`); an exception there fails that cell only.
    on_cell : callable, optional
        Called with each cell's :class:`CellResult` as it is done (in the order the cells finish).
    num_cpus : int, optional
        CPUs of a local Ray started here (default: all of this machine's).

    Returns
    -------
    list of CellResult
        One per cell, in cell order. A failed cell holds its error; the other cells go on.

    Raises
    ------
    ImportError
        Ray is needed (not ``sequential``) and not installed (:data:`RAY_MISSING`).
    ValueError
        ``address`` with ``sequential``, or a bad ``num_cpus``.
    """
    if sequential and address is not None:
        raise ValueError("address is for a fit on Ray; a sequential fit runs in this process")
    if num_cpus is not None and (address is not None or isinstance(num_cpus, bool) or num_cpus < 1):
        raise ValueError(f"num_cpus is for a local Ray and must be at least 1, got {num_cpus!r}")
    results: dict[int, CellResult] = {}

    def done(cell: int, outcome: tuple[bytes, bytes, float] | BaseException) -> None:
        name = cell_name(cell)
        if isinstance(outcome, BaseException):
            result = CellResult(cell, name, 0.0, error=_one_line(outcome))
        else:
            manifest, weights, seconds = outcome
            files = (manifest, weights)
            try:
                note = publish(name, files) if publish is not None else ""
            except Exception as exc:
                result = CellResult(cell, name, seconds, files, error=f"publishing: {_one_line(exc)}")
            else:
                result = CellResult(cell, name, seconds, files, note=note)
        if not result.ok:
            log.info("%s failed: %s", name, result.error)
        results[cell] = result
        if on_cell is not None:
            on_cell(result)

    if sequential:
        for cell in range(config.cells):
            try:
                outcome: tuple[bytes, bytes, float] | BaseException = _cell_task(cell, config)
            except Exception as exc:
                outcome = exc
            done(cell, outcome)
    else:
        _on_ray(config, address, num_cpus, done)
    return [results[c] for c in range(config.cells)]


def _on_ray(
    config: FleetFitConfig,
    address: str | None,
    num_cpus: int | None,
    done: Callable[[int, tuple[bytes, bytes, float] | BaseException], None],
) -> None:
    """Every cell as a Ray task of ``config.threads`` CPUs; ``done(cell, files or error)`` as each finishes."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        local = {"num_cpus": num_cpus, "include_dashboard": False} if address is None else {}
        ray.init(address=address, log_to_driver=False, configure_logging=False, **local)
    try:
        task = ray.remote(_cell_task).options(num_cpus=config.threads)
        pending = {task.remote(c, config): c for c in range(config.cells)}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task raised, or its worker died
                    outcome = exc
                done(cell, outcome)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# where the models go


def twin_publisher(client: TwinClient, *, alias: str = "champion") -> Publisher:
    """Register each cell's model in the twin ``client`` (a :class:`twin.client.TwinClient`) as a new version of
    the cell's model, with ``alias`` moved to it; the note is ``"twin cell-017 v3"``."""

    def publish(name: str, files: ModelFiles) -> str:
        model, _ = client.register(name, files, set_alias=alias, description="alutwin fleet fit")
        return f"twin {model.name} v{model.version}"

    return publish


def folder_publisher(folder: str | os.PathLike[str]) -> Publisher:
    """Write each cell's model as the model directory ``<folder>/<name>/`` (replacing one there); the note is
    the directory."""
    root = Path(folder)

    def publish(name: str, files: ModelFiles) -> str:
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        manifest, weights = files
        write_atomic(directory / WEIGHTS_NAME, weights)  # weights first: the manifest's checksum binds the pair
        write_atomic(directory / MANIFEST_NAME, manifest)
        fsync_dir(directory)
        return str(directory)

    return publish


def _both(first: Publisher, second: Publisher) -> Publisher:
    return lambda name, files: f"{first(name, files)}; {second(name, files)}"


# ---------------------------------------------------------------------------------------------------------------
# the command


CONFIG_FLAGS = {
    "cells": "cells",
    "members": "members",
    "epochs": "epochs",
    "retrain_epochs": "retrain_epochs",
    "n_traj": "train",
    "n_steps": "steps",
    "kind": "kind",
    "seed": "seed",
    "threads": "threads",
}
"""The argument (``dest``) of ``alutwin fleet fit`` that sets each field of :class:`FleetFitConfig`."""


def build_config(args: argparse.Namespace) -> FleetFitConfig:
    """The :class:`FleetFitConfig` of the command-line arguments (a ValueError naming the flag when one is bad)."""
    try:
        return FleetFitConfig(**{field: getattr(args, dest) for field, dest in CONFIG_FLAGS.items()})
    except ValueError as exc:
        text = str(exc)
        for field, dest in CONFIG_FLAGS.items():
            text = text.replace(f"FleetFitConfig.{field} ", f"--{dest.replace('_', '-')} ")
            text = text.replace(f"FleetFitConfig.{field}:", f"--{dest.replace('_', '-')}:")
        raise ValueError(text) from None


def _twin_client(args: argparse.Namespace) -> TwinClient | None:
    """A client of ``--twin`` with the token of ``--twin-token-env`` and the roots of ``--twin-tls-ca``, checked
    to answer; None without ``--twin``."""
    if args.twin is None:
        if args.twin_tls_ca is not None:
            raise ValueError("--twin-tls-ca needs --twin")
        return None
    token = (os.environ.get(args.twin_token_env) or None) if args.twin_token_env else None  # unset: no token
    try:
        roots = Path(args.twin_tls_ca).read_bytes() if args.twin_tls_ca else None
    except OSError as exc:
        raise ValueError(f"--twin-tls-ca {args.twin_tls_ca}: cannot read it ({exc.strerror or exc})") from None
    client = TwinClient(args.twin, token=token, root_certificates=roots, timeout=60.0)
    try:
        client.health()
    except grpc.RpcError as exc:
        client.close()
        raise RuntimeError(f"the twin at {args.twin} does not answer ({exc.code().name}): nothing fitted") from None
    return client


def _run(args: argparse.Namespace) -> int:
    """``alutwin fleet fit``: exit 0 when every cell was fitted and published, 1 when one failed."""
    config = build_config(args)
    if args.sequential and args.address is not None:
        raise CliError("--address is for a fit on Ray; --sequential fits in this process")
    if not args.sequential and not ray_available():
        raise CliError(RAY_MISSING)
    with contextlib.ExitStack() as stack:
        client = _twin_client(args)
        publishers = []
        if client is not None:
            stack.callback(client.close)
            publishers.append(twin_publisher(client))
        if args.out is not None or client is None:
            out = command_output_dir(args.out, "fleet-output")
            publishers.append(folder_publisher(out))
            print(f"models in {out}")
        publish = publishers[0] if len(publishers) == 1 else _both(*publishers)
        bar = stack.enter_context(
            tqdm(total=config.cells, desc="cells", unit="cell", disable=not show_progress(args) or None)
        )

        def report(r: CellResult) -> None:
            line = f"{r.name}: fitted in {r.seconds:.1f} s, {r.note}" if r.ok else f"{r.name}: FAILED: {r.error}"
            bar.write(line, file=sys.stdout)
            bar.update(1)

        t = time.perf_counter()
        where = "one after another" if args.sequential else f"on Ray ({args.address or 'local'})"
        print(f"fitting {config.cells} cells {where}: {config.kind} x{config.members}, {config.epochs} epochs")
        results = fit_fleet(config, address=args.address, sequential=args.sequential, publish=publish, on_cell=report)
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} cells fitted in {time.perf_counter() - t:.1f} s")
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        print(
            f"{getattr(args, '_prog', 'alutwin fleet fit')}: error: {len(failed)} of {len(results)} cells failed: {shown}",
            file=sys.stderr,
        )
        return 1
    return 0
