"""alutwin as a user installs it: a wheel, in a fresh virtual environment, run from a folder outside the repository.

The wheel is built from a copy of what a build reads (pyproject.toml, README.md, LICENSE and the six packages),
without build isolation (the network may be out of reach; setuptools is in the test's environment). Its content is
checked: the packages and nothing else at the top level (no ``proto``: the generated code is ``alutwin.v1``), the
default models, the C sources, ``py.typed`` markers and the license.

The fresh environment: ``python -m venv`` without system site-packages, so it cannot see the development install.
Reinstalling torch, CasADi and the rest into it would need the network and minutes, so it sees the test
environment's dependencies through a ``.pth`` file that names a folder of links to every entry of this
environment's site-packages except alutwin's own (its editable finder and its ``.dist-info``); the wheel is then
installed by pip with ``--no-index``, so pip checks that those dependencies satisfy the wheel's requirements and
cannot fetch anything. Every import of ours must then resolve inside the new environment's site-packages.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import alutwin
from alutwin.cbuild import BuildError, cache_dir
from identification.pretrained import PACKAGED_KINDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("alutwin", "plant", "identification", "twin", "controller", "apps")
OURS = ("__editable__", "alutwin-", "alutwin.", *PACKAGES)
"""Names in site-packages that belong to alutwin's own (development) installation."""
HOURS = 0.5
STEPS = round(HOURS * 360)  # 10 s steps


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from the working tree."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", str(dist), str(src)], cwd=dist, env=dict(os.environ))
    (path,) = dist.glob("alutwin-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Iterator[dict]:
    """A fresh virtual environment with the wheel installed: its paths and the environment to run it in."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=dict(os.environ))
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=root,
            env=dict(os.environ),
        ).stdout.strip()
    )
    deps = root / "deps"
    deps.mkdir()
    for folder in site.getsitepackages():
        for entry in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else ():
            if not entry.name.startswith(OURS) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (purelib / "_alutwin_test_deps.pth").write_text(f"{deps}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # A cache of its own, seeded with the libraries already built here and handed back afterwards: the cache key
    # hashes the source, the compiler and the flags, so only identical builds are reused, and the NMPC's cold
    # build (minutes on two cores) is paid once per machine, not once per run.
    cache = root / "cache"
    _copy_libraries(_home_cache(), cache)
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "PYTHONNOUSERSITE": "1"}
    env |= {"ALUTWIN_CACHE": str(cache), "VIRTUAL_ENV": str(venv)}
    work = root / "work"  # outside the repository: nothing resolves relative to it
    work.mkdir()
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)], cwd=work, env=env)
    yield {"python": python, "alutwin": venv / "bin" / "alutwin", "purelib": purelib, "env": env, "work": work}
    _copy_libraries(cache, _home_cache())


def _home_cache() -> Path | None:
    """This environment's compile cache, or None where it has none."""
    try:
        return cache_dir()
    except BuildError:
        return None


def _copy_libraries(src: Path | None, dst: Path | None) -> None:
    """Copy the libraries of cache ``src`` that ``dst`` lacks, each renamed into place (the cache's own rule)."""
    if src is None or dst is None:
        return
    dst.mkdir(parents=True, exist_ok=True)
    for lib in src.glob("*.so"):
        if not (dst / lib.name).exists():
            tmp = dst / f".{lib.name}.{os.getpid()}.copy"
            shutil.copy2(lib, tmp)
            os.replace(tmp, dst / lib.name)


def test_the_wheel_holds_our_packages_models_sources_and_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"alutwin-{alutwin.__version__}.dist-info/METADATA").decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {*PACKAGES, f"alutwin-{alutwin.__version__}.dist-info"}  # no top-level proto package
    assert "alutwin/v1/twin_pb2.py" in names and not any(n.startswith("proto/") for n in names)
    for kind in PACKAGED_KINDS:
        assert {
            f"identification/pretrained/{kind}/manifest.json",
            f"identification/pretrained/{kind}/weights.safetensors",
        } <= names
    sources = {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.c")}
    assert sources and sources <= names
    assert {f"{pkg}/py.typed" for pkg in PACKAGES} <= names
    assert f"alutwin-{alutwin.__version__}.dist-info/licenses/LICENSE" in names
    assert f"\nVersion: {alutwin.__version__}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata


def test_the_fresh_environment_imports_the_wheel_not_the_repository(installed):
    probe = (
        "import importlib, importlib.metadata as md, json, sys\n"
        f"mods = {{m: importlib.import_module(m).__file__ for m in {PACKAGES!r}}}\n"
        "from identification.pretrained import default_models_dir\n"
        "print(json.dumps({'mods': mods, 'models': str(default_models_dir()), 'path': sys.path,\n"
        "    'dists': [str(d.locate_file('')) for d in md.distributions() if d.metadata['Name'] == 'alutwin']}))\n"
    )
    env = {k: v for k, v in installed["env"].items() if k != "ALUTWIN_MODELS"}
    got = json.loads(_run([str(installed["python"]), "-c", probe], cwd=installed["work"], env=env).stdout)
    purelib = installed["purelib"]
    for module, file in got["mods"].items():
        assert Path(file).is_relative_to(purelib), f"{module} imported from {file}, not from the wheel"
    assert Path(got["models"]) == purelib / "identification" / "pretrained"
    assert got["dists"] == [str(purelib)]  # the development install's metadata is not visible
    assert not [p for p in got["path"] if p and Path(p).resolve().is_relative_to(REPO)]


def test_version_demo_and_control_run_from_another_folder(installed):
    work, env, cli = installed["work"], installed["env"], str(installed["alutwin"])
    env = {k: v for k, v in env.items() if k != "ALUTWIN_MODELS"}
    packaged = installed["purelib"] / "identification" / "pretrained"
    manifest = json.loads((packaged / "sparse-inputskip" / "manifest.json").read_text())
    nonzero_per_member = manifest["nonzero_weights"]["total"] / manifest["n_members"]

    assert _run([cli, "--version"], cwd=work, env=env).stdout.strip() == f"alutwin {alutwin.__version__}"

    _run([cli, "demo", "-q", "--hours", str(HOURS), "--out", "demo"], cwd=work, env=env)
    for name in ("report.md", "report.json", "online.md", "trajectories_seed0.png"):
        assert (work / "demo" / name).stat().st_size > 0, name
    doc = json.loads((work / "demo" / "report.json").read_text())
    assert Path(doc["settings"]["demo"]["models_dir"]) == packaged
    by_controller = {r["controller"]: r for r in doc["results"]}
    assert set(by_controller) == {"baseline", "sparse"}
    for r in by_controller.values():
        assert r["steps"] == STEPS and math.isfinite(r["kwh_per_kg"]) and r["kwh_per_kg"] > 0
    sparse = by_controller["sparse"]
    assert sparse["solves"] >= 1 and sparse["model"]["kind"] == "sparse-inputskip"
    assert sparse["model"]["nonzero_weights_per_member"] == nonzero_per_member  # the packaged model, served
    assert list(Path(env["ALUTWIN_CACHE"]).glob("*.so"))  # compiled kernels live in the configured cache

    hours = 0.25  # two control intervals: without JIT each solve is slow
    args = ["control", "-q", "--controllers", "sparse", "--hours", str(hours), "--no-jit", "--out", "control"]
    _run([cli, *args], cwd=work, env=env)
    doc = json.loads((work / "control" / "report.json").read_text())
    assert Path(doc["settings"]["models_dir"]) == packaged
    (result,) = doc["results"]
    assert result["controller"] == "sparse" and result["steps"] == round(hours * 360) and result["solves"] == 2
    assert result["model"]["kind"] == "sparse-inputskip"
    assert result["model"]["nonzero_weights_per_member"] == nonzero_per_member
    assert (work / "control" / "report.md").stat().st_size > 0
