"""The C build cache: one floating-point policy for every build, caching (per host type for native builds),
errors, the cached loader; and every kernel the project ships, assembled and flagged as its library does it,
compiles warning-free with ``-Wall -Wextra -Werror``."""

from __future__ import annotations

import ctypes
import fnmatch
import os
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import alutwin.cbuild as cbuild
from alutwin.cbuild import (
    DEFAULT_FLAGS,
    NATIVE_FLAGS,
    BuildError,
    LibraryCache,
    build_shared_library,
    cache_dir,
    compiler_version,
    find_compiler,
    package_source,
    usable_cpus,
)
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
    **{f"rollout-{p}": (lambda p=p: rollout_source(p), NATIVE_FLAGS) for p in PRIORS},
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


@needs_compiler
def test_native_builds_are_cached_per_host_type(tmp_path, monkeypatch):
    """-march=native code may not run on another CPU: the host's fingerprint joins the key of such builds only."""
    native, _ = build_shared_library(SOURCE, "native", (*NATIVE_FLAGS, "-DANSWER=1"), directory=tmp_path)
    portable, _ = build_shared_library(SOURCE, "portable", ("-DANSWER=1",), directory=tmp_path)
    monkeypatch.setattr(cbuild, "host_id", lambda: "another-host-type")
    elsewhere, compiled = build_shared_library(SOURCE, "native", (*NATIVE_FLAGS, "-DANSWER=1"), directory=tmp_path)
    assert compiled and elsewhere != native
    tuned, _ = build_shared_library(SOURCE, "native", ("-mtune=native", "-DANSWER=1"), directory=tmp_path)
    monkeypatch.undo()
    assert build_shared_library(SOURCE, "native", ("-mtune=native", "-DANSWER=1"), directory=tmp_path)[0] != tuned
    assert build_shared_library(SOURCE, "portable", ("-DANSWER=1",), directory=tmp_path) == (portable, False)


def test_library_cache_remembers_libraries_and_errors(tmp_path, monkeypatch):
    compilers = []
    for name in ("cc-a", "cc-b"):  # two "compilers" find_compiler can find ($CC): files that may be executed
        compilers.append(tmp_path / name)
        compilers[-1].write_text("#!/bin/sh\n")
        compilers[-1].chmod(0o755)
    monkeypatch.setenv("CC", str(compilers[0]))
    calls: list[tuple] = []

    def load(*key):
        calls.append(key)
        if key[0] == "bad":
            raise BuildError(f"cannot build {key}")
        if key[0] == "worse":
            raise ValueError("not a build error")
        return f"lib{key}"

    cache = LibraryCache(load, BuildError, maxsize=4)
    assert cache.get("good", 1) == "lib('good', 1)" and cache.get_or_error("good", 1) == "lib('good', 1)"
    assert not cache.available("bad", 1) and not cache.available("bad", 1)
    with pytest.raises(BuildError, match=r"cannot build \('bad', 1\)") as first:
        cache.get("bad", 1)
    with pytest.raises(BuildError) as second:
        cache.get("bad", 1)
    assert first.value is not second.value  # a fresh exception each time: the cached one's traceback never grows
    assert calls == [("good", 1), ("bad", 1)]  # one load per key, failed or not
    monkeypatch.setenv("CC", str(compilers[1]))  # another compiler: asked again
    assert cache.available("good", 1) and calls == [("good", 1), ("bad", 1), ("good", 1)]
    fixed = LibraryCache(load, BuildError, per_compiler=False)
    assert fixed.available("good", 2)
    monkeypatch.setenv("CC", str(compilers[0]))
    assert fixed.available("good", 2) and calls[3:] == [("good", 2)]  # not per compiler: one load for both
    with pytest.raises(ValueError, match="not a build error"):  # errors of other types propagate, uncached
        cache.get("worse")
    with pytest.raises(ValueError):
        cache.get("worse")
    assert calls[4:] == [("worse",), ("worse",)]


def test_helpers_of_the_kernels(tmp_path):
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)
    shipped = REPO / "identification" / "training" / "kernel.c"
    assert package_source("identification.training", "kernel.c") == shipped.read_text(encoding="utf-8")
    assert compiler_version(str(tmp_path / "no-such-cc")) is None
    cc = find_compiler()
    if cc is not None:
        version = compiler_version(cc)
        assert isinstance(version, str) and version and "\n" not in version
