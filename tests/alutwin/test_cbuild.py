"""The C build cache: one floating-point policy for every build, caching, errors; and every kernel the project
ships, assembled as its library assembles it, compiles warning-free with ``-Wall -Wextra -Werror``."""

from __future__ import annotations

import ctypes
import fnmatch
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from alutwin.cbuild import DEFAULT_FLAGS, BuildError, build_shared_library, cache_dir, find_compiler
from identification.rollout.library import KERNEL_FLAGS as ROLLOUT_FLAGS
from identification.rollout.translate import kernel_source as rollout_source
from identification.surrogate import PRIORS
from identification.training.fused import kernel_flags as training_flags
from identification.training.fused import kernel_source as training_source
from plant.engine import COMPILE_FLAGS as PLANT_FLAGS
from plant.engine import generate_source as plant_source
from plant.params import DEFAULT_LIMITS, DEFAULT_PARAMS

REPO = Path(__file__).resolve().parents[2]
STRICT = ("-Wall", "-Wextra", "-Werror")

needs_compiler = pytest.mark.skipif(find_compiler() is None, reason="no C compiler")

KERNELS = {
    **{f"rollout-{p}": (lambda p=p: rollout_source(p), ROLLOUT_FLAGS) for p in PRIORS},
    **{f"training-{d}": (training_source, training_flags(d)) for d in ("float32", "float64")},
    "plant-engine": (lambda: plant_source(10.0, DEFAULT_PARAMS, DEFAULT_LIMITS), PLANT_FLAGS),
}


@needs_compiler
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_shipped_kernels_compile_without_warnings(tmp_path, name):
    source, flags = KERNELS[name]
    path, compiled_now = build_shared_library(source(), name.replace("-", "_"), (*flags, *STRICT), directory=tmp_path)
    assert compiled_now and path.is_file() and path.stat().st_size > 0


def test_every_c_file_is_package_data():
    """The hand-written kernels are read with importlib.resources: a wheel must carry them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]
    includes = config["packages"]["find"]["include"]
    sources = sorted(p.relative_to(REPO) for top in ("alutwin", "plant", "identification", "twin", "controller", "apps")
                     for p in (REPO / top).rglob("*.c"))  # fmt: skip
    assert {str(s) for s in sources} >= {
        "identification/rollout/prelude.c",
        "identification/rollout/kernel.c",
        "identification/training/kernel.c",
        "plant/engine_driver.c",
    }
    for src in sources:
        package = ".".join(src.parent.parts)
        assert any(fnmatch.fnmatch(package, pat) for pat in includes), f"{package} is not a package"
        globs = [*patterns.get("*", []), *patterns.get(package, [])]
        assert any(fnmatch.fnmatch(src.name, g) for g in globs), f"{src} is not package data"


SOURCE = r"""
double mul_add(double a, double b, double c) { return a * b + c; }
int answer(void) { return ANSWER; }
"""


@needs_compiler
def test_no_fma_contraction_even_with_march_native(tmp_path):
    """GCC contracts ``a * b + c`` into an FMA by default where the CPU has one; the policy keeps two roundings."""
    path, _ = build_shared_library(SOURCE, "contract", ("-O3", "-march=native", "-DANSWER=42"), directory=tmp_path)
    lib = ctypes.CDLL(str(path))
    lib.mul_add.restype = ctypes.c_double
    lib.mul_add.argtypes = [ctypes.c_double] * 3
    a, b = 1.0 + 2.0**-30, 1.0 - 2.0**-30  # a * b = 1 - 2**-60 exactly, which rounds to 1
    assert lib.mul_add(a, b, -1.0) == 0.0  # an FMA would give -2**-60
    assert lib.answer() == 42  # the caller's flags reach the compiler, after DEFAULT_FLAGS
    assert "-ffp-contract=off" in DEFAULT_FLAGS


@pytest.mark.parametrize(
    "flags", [("-ffast-math",), ("-O3", "-ffp-contract=fast"), ("-ffp-contract=on",), ("-Ofast",), "-O3"]
)
def test_flags_that_break_the_policy_are_refused(tmp_path, flags):
    with pytest.raises(ValueError, match="flags"):
        build_shared_library(SOURCE, "refused", flags, directory=tmp_path)
    assert not any(tmp_path.iterdir())


@needs_compiler
def test_cache_builds_once_per_source_and_flags(tmp_path):
    first, fresh = build_shared_library(SOURCE, "cached", ("-DANSWER=1",), directory=tmp_path)
    again, fresh_again = build_shared_library(SOURCE, "cached", ("-DANSWER=1",), directory=tmp_path)
    other, _ = build_shared_library(SOURCE, "cached", ("-DANSWER=2",), directory=tmp_path)
    extra, _ = build_shared_library(SOURCE, "cached", ("-DANSWER=1",), key_extra="v2", directory=tmp_path)
    assert fresh and not fresh_again and again == first
    assert len({first, other, extra}) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (first, other, extra))  # no temps


@needs_compiler
def test_compile_errors_and_a_missing_compiler_raise_build_error(tmp_path, monkeypatch):
    with pytest.raises(BuildError, match="compiling broken"):
        build_shared_library("int f(void) { return }", "broken", directory=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert find_compiler() is None
    with pytest.raises(BuildError, match="no C compiler"):
        build_shared_library(SOURCE, "nothing", directory=tmp_path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ALUTWIN_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ALUTWIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "alutwin"
