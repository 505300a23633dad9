"""Every known mistake on the ``alutwin`` command line ends in its exit code and one line on stderr that names the
problem, without a traceback (each case run as a user would, in a subprocess; all cases at once, in threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    """``alutwin *argv`` in a scratch folder (``{tmp}`` in an argument is that folder) exits with ``code`` and
    prints one error line holding each of ``names``; ``usage``: argparse's error (its usage lines come first)."""

    id: str
    argv: tuple[str, ...]
    code: int
    names: tuple[str, ...]
    usage: bool = False
    no_compiler: bool = False
    absent: tuple[str, ...] = field(default=())  # paths (under {tmp}) that must not have been created


BRIDGE = "plant: 127.0.0.1:1\ntwin: 127.0.0.1:2\n"

FILES = {
    "a-file": "not a folder\n",
    "bad.yaml": "n_cells: [1\nseed: 0\n",
    "unknown-key.yaml": BRIDGE + "batch_sise: 10\n",
    "wrong-type.yaml": "n_cells: two\nseed: 0\nport: 0\n",
    "two-problems.yaml": "n_cells: 0\nseed: 0\nport: 0\nbogus: 1\n",
}

SIM = ("--train", "1", "--test", "0", "--steps", "5")

CASES = (
    Case(
        "simulate --out under a file",
        ("simulate", "--out", "{tmp}/a-file/sets", *SIM),
        2,
        ("--out", "a-file is a file, not a folder"),
    ),
    Case("study --out onto a file", ("study", "--quick", "--out", "{tmp}/a-file"), 2, ("--out", "is a file")),
    Case(
        "simulate --engine compiled without a C compiler",
        ("simulate", "--engine", "compiled", "--out", "{tmp}/sim", *SIM),
        2,
        ("--engine compiled needs a C compiler", "--engine numpy"),
        no_compiler=True,
        absent=("sim",),
    ),
    Case(
        "plant-demo --engine compiled without a C compiler",
        ("plant-demo", "--engine", "compiled", "--out", "{tmp}/demo"),
        2,
        ("--engine compiled needs a C compiler",),
        no_compiler=True,
        absent=("demo",),
    ),
    Case(
        "twin register without --name",
        ("twin", "register", "--model", "{tmp}"),
        2,
        ("the following arguments are required: --name",),
        usage=True,
    ),
    Case("bad YAML", ("plant", "serve", "--config", "{tmp}/bad.yaml"), 2, ("bad.yaml", "not valid YAML at line 2")),
    Case(
        "unknown config key",
        ("twin", "ingest", "--config", "{tmp}/unknown-key.yaml"),
        2,
        ("unknown-key.yaml", "unknown key 'batch_sise'", "did you mean 'batch_size'"),
    ),
    Case(
        "wrong type in a config",
        ("plant", "serve", "--config", "{tmp}/wrong-type.yaml"),
        2,
        ("wrong-type.yaml", "n_cells: must be an integer, got 'two'"),
    ),
    Case(
        "every config problem at once",
        ("plant", "serve", "--config", "{tmp}/two-problems.yaml"),
        2,
        ("n_cells: must be >= 1, got 0", "unknown key 'bogus'"),
    ),
    Case(
        "nonexistent --config",
        ("plant", "serve", "--config", "{tmp}/missing.yaml"),
        2,
        ("missing.yaml", "No such file"),
    ),
    Case(
        "bad flag value --hours -1",
        ("plant-demo", "--hours", "-1"),
        2,
        ("argument --hours", "got '-1'"),
        usage=True,
    ),
    Case(
        "bad flag value in a config's place",
        ("twin", "ingest", "--plant", "p:1", "--twin", "t:2", "--every", "0"),
        2,
        ("every: must be >= 1, got 0",),
    ),
    Case("unknown command", ("simulat",), 2, ("invalid choice: 'simulat'",), usage=True),
    Case("unknown flag", ("simulate", "--trian", "3"), 2, ("unrecognized arguments: --trian",), usage=True),
)


def _run(case: Case, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    if case.no_compiler:
        empty = tmp / "no-compiler-bin"
        empty.mkdir(exist_ok=True)
        env["PATH"] = str(empty)  # no cc, no gcc; the interpreter is called by its full path
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    return subprocess.run(
        [sys.executable, "-m", "alutwin", *argv], capture_output=True, text=True, cwd=tmp, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Every case, run at once (each process mostly waits on imports)."""
    folders = {}
    for case in CASES:
        tmp = tmp_path_factory.mktemp("case")
        for name, text in FILES.items():
            (tmp / name).write_text(text)
        folders[case.id] = tmp
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = {c.id: pool.submit(_run, c, folders[c.id]) for c in CASES}
        return {key: (folders[key], future.result()) for key, future in done.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_gives_its_exit_code_and_one_line(case: Case, results) -> None:
    tmp, done = results[case.id]
    err = done.stderr
    assert done.returncode == case.code, err
    assert "Traceback" not in err and "Traceback" not in done.stdout, err
    lines = err.strip().splitlines()
    if case.usage:
        assert lines[0].startswith("usage: alutwin"), err
        errors = [line for line in lines if "error:" in line]
        assert errors == [lines[-1]], err
    else:
        assert len(lines) == 1, err
    line = lines[-1]
    assert line.startswith("alutwin") and ": error: " in line, err
    for name in case.names:
        assert name in line, (name, line)
    for path in case.absent:
        assert not (tmp / path).exists(), path
    assert not [p.name for p in tmp.iterdir() if "-output-" in p.name]  # no fresh output folder was left behind


def test_version_prints_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "alutwin", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    name, version = done.stdout.strip().split(" ")
    assert name == "alutwin" and version[0].isdigit()
