"""Compile a C source into a shared library once and cache it, safely across processes.

Every build starts from :data:`DEFAULT_FLAGS`, the project's one floating-point policy (no fused multiply-add
contraction, no fast-math); callers add flags (an optimisation level, :data:`NATIVE_FLAGS`, definitions) but
none that would break it. The cache key is a hash of the source, the compiler, its version and the flags (plus
any caller-supplied material, such as a code generator's version, and :func:`host_id` for flags that tune for
this CPU), so an edited kernel, another compiler or another host type never reuses a stale library. Libraries
are compiled in a temporary folder and renamed into place, so concurrent processes never load a half-written
file. :class:`LibraryCache` loads a built library once per process and remembers why it could not be had.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Hashable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

__all__ = [
    "CACHE_ENV",
    "DEFAULT_FLAGS",
    "NATIVE_FLAGS",
    "BuildError",
    "LibraryCache",
    "build_shared_library",
    "cache_dir",
    "check_flags",
    "compiler_version",
    "find_compiler",
    "host_id",
    "package_source",
    "usable_cpus",
]

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

log = logging.getLogger(__name__)

CACHE_ENV = "ALUTWIN_CACHE"
"""The environment variable that names the compile cache folder (:func:`cache_dir`)."""

DEFAULT_FLAGS: tuple[str, ...] = ("-O2", "-fPIC", "-shared", "-ffp-contract=off")
"""The flags every build starts with: a shared library, and no FMA contraction, so that the compiled code does
the roundings its source writes, whatever the compiler's default (GCC contracts by default)."""

NATIVE_FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fno-math-errno", "-pthread")
"""The flags of the hand-written kernels (rollout, training): tuned for this CPU, so their libraries are cached
per host type (:func:`host_id` joins the cache key of every build with ``-march=native`` or ``-mtune=native``)."""

_NATIVE = ("-march=native", "-mtune=native", "-mcpu=native")
_UNSAFE_MATH = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-fassociative-math", "-freciprocal-math")


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


def cache_dir() -> Path:
    """The folder of the compiled libraries, created if missing: the first usable one of ``$ALUTWIN_CACHE``,
    ``$XDG_CACHE_HOME/alutwin``, ``~/.cache/alutwin`` and ``<temp dir>/alutwin-cache-<uid>``.

    A folder is usable where it can be created and a file written in it, so a read-only or missing home (a
    container) falls back to the next one; the temporary folder must belong to this user and be writable by no
    one else, since libraries are loaded from it. The choice is logged (INFO) once per process and environment.

    Raises
    ------
    BuildError
        If ``$ALUTWIN_CACHE`` is set but not usable (no fallback: it was asked for), or no folder is usable.
    """
    env = os.environ
    return _resolve_cache(env.get(CACHE_ENV), env.get("XDG_CACHE_HOME"), env.get("HOME"), tempfile.gettempdir())


@lru_cache(maxsize=8)
def _resolve_cache(explicit: str | None, xdg: str | None, home: str | None, tmp: str) -> Path:
    """:func:`cache_dir` for these values of the environment."""
    if explicit:
        path = Path(explicit).expanduser()
        problem = _unusable(path)
        if problem:
            raise BuildError(
                f"${CACHE_ENV}={explicit!r} cannot be the compile cache ({problem}); "
                "point it at a writable folder or unset it"
            )
        log.info("compile cache: %s (from $%s)", path, CACHE_ENV)
        return path
    tried = []
    candidates = []
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative path is invalid and ignored
        candidates.append(Path(xdg) / "alutwin")
    home_dir = Path(home) if home else Path(os.path.expanduser("~"))  # "~" itself where there is no home
    if home_dir.is_absolute():
        candidates.append(home_dir / ".cache" / "alutwin")
    else:
        tried.append("~/.cache/alutwin: no home folder")
    for path in candidates:
        problem = _unusable(path)
        if not problem:
            log.info("compile cache: %s", path)
            return path
        tried.append(f"{path}: {problem}")
    path = Path(tmp) / f"alutwin-cache-{_user_id()}"
    problem = _unusable(path, private=True)
    if problem:
        tried.append(f"{path}: {problem}")
        raise BuildError(f"no usable compile cache folder (set ${CACHE_ENV}): {'; '.join(tried)}")
    log.info("compile cache: %s (%s)", path, "; ".join(tried))
    return path


def _user_id() -> str:
    getuid = getattr(os, "getuid", None)  # not on Windows
    return str(getuid()) if getuid is not None else getpass.getuser()


def _unusable(path: Path, *, private: bool = False) -> str:
    """Why ``path`` cannot hold the cache ('' if it can): it is created if missing, and a file is written in it.

    ``private``: it must also be a real folder (no link) of this user that no one else may write to.
    """
    try:
        path.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
        if private:
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode):
                return "not a folder (a link?)"
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                return f"owned by user id {st.st_uid}, not by this user"
            if st.st_mode & 0o022:
                return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return ""


def find_compiler() -> str | None:
    """Path of the C compiler: ``$CC`` if set and found, else ``cc``, else ``gcc``; None if there is none.

    Looked up on every call (it is cheap), so a changed ``PATH`` or ``CC`` takes effect at once.
    """
    for name in (os.environ.get("CC"), "cc", "gcc"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


@lru_cache(maxsize=1)
def host_id() -> str:
    """A fingerprint of this CPU's features: libraries built with ``-march=native`` are cached per host type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text = "\n".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name", "vendor_id"))}))
    except OSError:
        text = platform.machine() + platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def compiler_version(cc: str) -> str | None:
    """The first line of ``cc --version`` (cached per compiler path), or None where it cannot be run."""
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.splitlines()[0] if done.stdout else None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=16)
def package_source(package: str, name: str) -> str:
    """The text of ``name``, a C file shipped as package data of ``package`` (read once per process)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def check_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """``flags`` unchanged if they keep the floating-point policy of every build; else a ValueError naming them.

    The policy: no FMA contraction (``-ffp-contract=off``) and no fast-math in any of its forms.
    """
    unsafe = [f for f in flags if f in _UNSAFE_MATH or (f.startswith("-ffp-contract=") and f != "-ffp-contract=off")]
    if unsafe:
        raise ValueError(
            f"flags {unsafe} break the floating-point policy of every build (-ffp-contract=off, no fast-math)"
        )
    return flags


def build_shared_library(
    source: str,
    name: str,
    flags: tuple[str, ...] = (),
    libs: tuple[str, ...] = ("-lm",),
    *,
    key_extra: str = "",
    directory: Path | None = None,
) -> tuple[Path, bool]:
    """Build a shared library from C ``source``, or find it in the cache.

    Parameters
    ----------
    source : the C source.
    name : the library's name (a prefix of its file name in the cache).
    flags : compiler flags after :data:`DEFAULT_FLAGS` (a later ``-O`` level replaces ``-O2``); with
        ``-march=native`` or ``-mtune=native`` among them, the library is cached per host type (:func:`host_id`).
    libs : libraries to link.
    key_extra : more material for the cache key (a code generator's version).
    directory : replaces the cache folder (tests, cold-build timing).

    Returns
    -------
    ``(path, compiled_now)``.

    Raises
    ------
    ValueError
        If ``flags`` or ``libs`` is not a sequence of strings, or ``flags`` would switch FMA contraction or
        fast-math on.
    BuildError
        With the compiler's message, if there is no compiler or it fails.
    """
    for arg, values in (("flags", flags), ("libs", libs)):
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{arg} must be a sequence of strings, got {values!r}")
    check_flags(flags)
    cc = find_compiler()
    if cc is None:
        raise BuildError("no C compiler found ($CC, cc or gcc)")
    command_flags = (*DEFAULT_FLAGS, *flags)
    host = (host_id(),) if any(f in _NATIVE for f in flags) else ()
    key = "\0".join((source, cc, compiler_version(cc) or "unknown", *command_flags, *libs, key_extra, *host))
    folder = directory if directory is not None else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BuildError(f"cannot create the cache folder {folder}: {err}") from err
    target = folder / f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:20]}.so"
    if target.is_file():
        return target, False
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-build-") as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / target.name
        try:
            done = subprocess.run(
                [cc, *command_flags, str(src), "-o", str(out), *libs], capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise BuildError(f"running the C compiler {cc} failed: {err}") from err
        if done.returncode != 0 or not out.is_file():
            raise BuildError(f"compiling {name} with {cc} failed:\n{done.stderr[-4000:]}")
        os.replace(out, target)  # atomic: a concurrent process sees nothing or the whole file
    return target, True


class LibraryCache(Generic[T, E]):
    """A compiled library loaded once per key and process, or the error that says why it cannot be had.

    Parameters
    ----------
    load : ``load(*key)`` builds and loads the library (and may self-check it), raising ``error`` where it
        cannot.
    error : the exception type of a library that cannot be had; it is cached like a library, so a missing
        compiler is looked for once, not on every call.
    maxsize : keys remembered (least recently used first out).
    per_compiler : remember per compiler found now (:func:`find_compiler`, looked up on every call), so a
        changed ``PATH`` or ``CC`` is tried again; False saves that lookup on hot paths.
    """

    def __init__(self, load: Callable[..., T], error: type[E], *, maxsize: int = 8, per_compiler: bool = True) -> None:
        self.error = error
        self.per_compiler = per_compiler

        @lru_cache(maxsize=maxsize)
        def cached(key: tuple[Hashable, ...], compiler: str | None) -> T | E:
            del compiler  # part of the cache key only
            try:
                return load(*key)
            except error as err:
                return err

        self._cached = cached

    def get_or_error(self, *key: Hashable) -> T | E:
        """The library for ``key``, or the cached ``error`` saying why there is none."""
        return self._cached(key, find_compiler() if self.per_compiler else None)

    def get(self, *key: Hashable) -> T:
        """The library for ``key``; raises a fresh ``error`` with the cached message where there is none."""
        lib = self.get_or_error(*key)
        if isinstance(lib, Exception):  # only ``error`` is cached as an exception
            raise self.error(str(lib))
        return lib

    def available(self, *key: Hashable) -> bool:
        """Whether the library for ``key`` can be had here (built and loaded on the first call)."""
        return not isinstance(self.get_or_error(*key), self.error)
