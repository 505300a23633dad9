"""What every benchmark script shares: the machine record, the results file and the argument checks.

Benchmarks are compared across machines (AMD and Intel among them), so every result file records the same
``machine`` block, the CPU model included. Not a benchmark itself: ``make bench`` skips files starting with
an underscore. The scripts run as ``python bench/NAME.py`` and import it as ``from _common import ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt_
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "check_positive",
    "cpu_model",
    "load_average",
    "machine",
    "machine_line",
    "parser",
    "scoped_torch_threads",
    "write_results",
]


def cpu_model() -> tuple[str, str]:
    """``(model name, vendor)`` of the first CPU in ``/proc/cpuinfo``; ``platform.processor()`` and ``""``
    where that file or its fields are missing (not Linux)."""
    model, vendor = "", ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        if model and vendor:
            break
    return model or platform.processor() or platform.machine(), vendor


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages; empty where the system has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else []


def machine(load_start: Sequence[float], **versions: Any) -> dict[str, Any]:
    """The machine block of a result file, taken at the end of the run.

    Parameters
    ----------
    load_start : sequence of float
        :func:`load_average` at the start of the run; the end's is taken here.
    **versions
        Library versions and settings the benchmark depends on (``numpy=np.__version__``,
        ``torch_threads=torch.get_num_threads()``, ...), recorded as given.

    Returns
    -------
    dict
        ``cpu`` (model name), ``cpu_vendor``, ``cpus_available`` (to this process), ``cpus_total``,
        ``platform``, ``python``, ``loadavg_start``, ``loadavg_end``, ``date_utc`` and the ``versions``.
    """
    model, vendor = cpu_model()
    total = os.cpu_count()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return {
        "cpu": model,
        "cpu_vendor": vendor,
        "cpus_available": available,
        "cpus_total": total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(load_start),
        "loadavg_end": load_average(),
        "date_utc": dt_.datetime.now(dt_.timezone.utc).isoformat(timespec="seconds"),
        **versions,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line describing the machine block ``m`` of :func:`machine` (torch threads where recorded)."""
    threads = f", torch threads {m['torch_threads']}" if "torch_threads" in m else ""
    start, end = m["loadavg_start"], m["loadavg_end"]
    load = f"; load average {start[0]:.2f} at start, {end[0]:.2f} at end" if start and end else ""
    return f"machine: {m['cpu']}, {m['cpus_available']} of {m['cpus_total']} CPUs available{threads}{load}"


def parser(doc: str, default_out: Path) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with ``--out`` (the JSON results file)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON results (default {default_out})")
    return p


def check_positive(p: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Stop with ``p.error`` unless every named argument is at least 1 (an int) or above 0 (a float)."""
    for name in names:
        value = getattr(args, name)
        whole = isinstance(value, int)
        if not (value >= 1 if whole else value > 0):
            p.error(f"--{name.replace('_', '-')} must be {'at least 1' if whole else 'positive'}, got {value}")


def write_results(doc: dict[str, Any], path: Path, default: Callable[[Any], Any] | None = None) -> None:
    """Print the :func:`machine_line` of ``doc["machine"]``, write ``doc`` as JSON to ``path`` (its folder made
    if missing) and say so on stdout.

    ``default`` converts what JSON cannot hold (as in :func:`json.dumps`).
    """
    print(machine_line(doc["machine"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=default) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def scoped_torch_threads(n: int) -> contextlib.AbstractContextManager[None]:
    """Run the block with ``n`` torch threads; the process's setting is restored afterwards.

    torch is imported here, not at the top, so that the benchmarks without torch do not load it.
    """
    from identification.training import torch_threads

    return torch_threads(n)
