"""Compile a C source into a shared library once and cache it, safely across processes.

The cache key is a hash of the source, the compiler flags and the compiler's version, so an edited kernel
or another compiler never reuses a stale library. Libraries are written to a temporary name and renamed
into place, so concurrent processes never load a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

__all__ = ["BuildError", "DEFAULT_FLAGS", "build_shared_library", "cache_dir", "find_compiler"]

DEFAULT_FLAGS: tuple[str, ...] = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
"""No -ffast-math and no FMA contraction: results stay reproducible and close to numpy's."""


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


def cache_dir() -> Path:
    """``$ALUTWIN_CACHE``, else ``$XDG_CACHE_HOME/alutwin``, else ``~/.cache/alutwin``."""
    root = os.environ.get("ALUTWIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "alutwin"
    )
    return Path(root)


@lru_cache(maxsize=1)
def find_compiler() -> tuple[str, str] | None:
    """``(path, version line)`` of the C compiler (``$CC``, ``cc`` or ``gcc``), or None if there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        path = shutil.which(name) if name else None
        if path:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True)
            except (OSError, subprocess.SubprocessError):
                continue
            return path, out.stdout.splitlines()[0] if out.stdout else name
    return None


def build_shared_library(
    source: str, name: str, flags: tuple[str, ...] = DEFAULT_FLAGS, libs: tuple[str, ...] = ("-lm",)
) -> Path:
    """Path of a shared library built from C ``source`` (built now, or found in the cache).

    Raises :class:`BuildError` with the compiler's message if there is no compiler or it fails.
    """
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C compiler found (set CC, or install gcc)")
    cc, version = compiler
    key = hashlib.sha256("\0".join((source, *flags, *libs, version)).encode()).hexdigest()[:20]
    target = cache_dir() / f"{name}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-build-") as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / f"{name}.so"
        proc = subprocess.run(
            [cc, *flags, str(src), "-o", str(out), *libs], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise BuildError(f"compiling {name} failed:\n{proc.stderr[-4000:]}")
        os.replace(out, target)
    return target
