"""Benchmark: start-up time of the ``alutwin`` command (``--help``, ``--version``, a command's ``--help``).

Side by side in one run: this working tree ("after") and the commit before the commands' parsers moved into light
modules ("before", :data:`BEFORE_REV`, unpacked with ``git archive`` into a temporary folder; the repository is not
touched). Both run under this interpreter with ``PYTHONPATH`` set to their tree, through one harness that reads
the tree's own ``alutwin.commands`` entry points from its ``pyproject.toml`` (the installed metadata names this
tree's modules only), so the two sides differ in their code alone. Each command is run ``--repeats`` times,
interleaved before/after, and the median wall time is kept. ``python -c pass`` is the interpreter's own floor.

Run from the repository root::

    .venv/bin/python bench/cli_start.py             # writes bench/results/cli_start.json
    .venv/bin/python bench/cli_start.py --repeats 3 --out /tmp/x.json

Timings on a machine shared with other work are noisy; the load average at the start and the end is recorded.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import check_positive, load_average, machine, parser, write_results

__all__ = ["BEFORE_REV", "COMMANDS", "main", "run_benchmark"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "cli_start.json"

BEFORE_REV = "0cadc62"
"""The last commit whose sub-commands registered their parsers from the heavy modules (torch, CasADi, grpc)."""

COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("--version",), ("simulate", "--help"), ("control", "--help"))

_HARNESS = """
import importlib.metadata as md, sys, tomllib
root, argv = sys.argv[1], sys.argv[2:]
with open(root + "/pyproject.toml", "rb") as f:
    table = tomllib.load(f)["project"]["entry-points"]["alutwin.commands"]
eps = md.EntryPoints(md.EntryPoint(n, v, "alutwin.commands") for n, v in table.items())
import alutwin.cli as cli
cli.entry_points = lambda group: eps
sys.exit(cli.main(argv))
"""
"""``alutwin`` with the commands of the tree given as the first argument."""


def _time(cmd: Sequence[str], tree: Path | None) -> tuple[float, int]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=env, cwd=tempfile.gettempdir(), timeout=120)
    return time.perf_counter() - t0, done.returncode


def _unpack(rev: str, into: Path) -> bool:
    """Write the files of commit ``rev`` into ``into``; False where git or the commit is missing."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        # compiled once, as the working tree's are: no run pays for writing __pycache__
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def run_benchmark(repeats: int, before_rev: str = BEFORE_REV) -> dict:
    """Time every command of :data:`COMMANDS` ``repeats`` times in each tree; the results document."""
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="alutwin-cli-before-") as tmp:
        before = Path(tmp)
        trees = {"after": REPO, **({"before": before} if _unpack(before_rev, before) else {})}
        runs: dict[tuple[str, str], list[tuple[float, int]]] = {}
        floor = []
        for _ in range(repeats):
            floor.append(_time([sys.executable, "-c", "pass"], None)[0])
            for args in COMMANDS:
                for side, tree in trees.items():
                    cmd = [sys.executable, "-c", _HARNESS, str(tree), *args]
                    runs.setdefault((" ".join(args), side), []).append(_time(cmd, tree))
    rows = []
    for args in COMMANDS:
        name = " ".join(args)
        row: dict = {"command": f"alutwin {name}"}
        for side in trees:
            times = [t for t, _ in runs[(name, side)]]
            codes = sorted({c for _, c in runs[(name, side)]})
            row[side] = {"median_s": statistics.median(times), "runs_s": times, "exit_codes": codes}
        rows.append(row)
    return {
        "workload": {"repeats": repeats, "before_rev": before_rev, "before_available": "before" in trees},
        "python_floor_s": statistics.median(floor),
        "commands": rows,
        "goals": {"help_under_0.5s": rows[0]["after"]["median_s"] < 0.5},
        "machine": machine(load_start),
    }


def _print(result: dict) -> None:
    w = result["workload"]
    print(f"alutwin start-up, median of {w['repeats']} runs; before = {w['before_rev']}")
    print(f"{'command':<28}{'before s':>10}{'after s':>10}{'speed-up':>10}")
    for r in result["commands"]:
        after = r["after"]["median_s"]
        before = r.get("before")
        if before is None:
            print(f"{r['command']:<28}{'-':>10}{after:>10.3f}{'-':>10}")
            continue
        note = "" if before["exit_codes"] == [0] else f"  (before: exit {before['exit_codes']})"
        print(f"{r['command']:<28}{before['median_s']:>10.3f}{after:>10.3f}{before['median_s'] / after:>9.1f}x{note}")
    print(f"python -c pass: {result['python_floor_s']:.3f} s; --help under 0.5 s: {result['goals']['help_under_0.5s']}")
    if not w["before_available"]:
        print(f"before: commit {w['before_rev']} not found (git archive failed); only this tree was timed")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    p = parser(__doc__, DEFAULT_OUT)
    p.add_argument("--repeats", type=int, default=7, help="runs of each command in each tree (default 7)")
    p.add_argument("--before", default=BEFORE_REV, help=f"commit to compare with (default {BEFORE_REV})")
    args = p.parse_args(argv)
    check_positive(p, args, "repeats")
    result = run_benchmark(args.repeats, args.before)
    _print(result)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
