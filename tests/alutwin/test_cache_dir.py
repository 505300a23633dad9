"""Where compiled libraries go (alutwin.cbuild.cache_dir): $ALUTWIN_CACHE, else the XDG/home cache, else a private
folder in the temporary directory, so a read-only or missing home (a container) still gets a cache."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest

from alutwin import cbuild
from alutwin.cbuild import BuildError, cache_dir


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean environment for cache_dir: no cache variables, the temporary directory under tmp_path."""
    monkeypatch.delenv("ALUTWIN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cbuild._resolve_cache.cache_clear()
    yield tmp
    cbuild._resolve_cache.cache_clear()


def _unwritable_home(tmp_path: Path) -> Path:
    """A home no one can create ~/.cache in: read-only (0o500) for a normal user; for root, who writes into
    read-only folders anyway, a path under a regular file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "home-file"
        blocker.write_text("not a folder")
        return blocker / "home"
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    return home


def _private_fallback(tmp: Path) -> Path:
    return tmp / f"alutwin-cache-{os.getuid()}"


def test_alutwin_cache_is_used_and_created(env, tmp_path, monkeypatch):
    monkeypatch.setenv("ALUTWIN_CACHE", str(tmp_path / "c" / "d"))
    assert cache_dir() == tmp_path / "c" / "d" and (tmp_path / "c" / "d").is_dir()


def test_an_unusable_alutwin_cache_is_one_line_error_without_fallback(env, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ALUTWIN_CACHE", str(blocker / "cache"))
    with pytest.raises(BuildError, match=r"^\$ALUTWIN_CACHE=.*cannot be the compile cache \(Not a directory\)") as err:
        cache_dir()
    assert "\n" not in str(err.value) and "unset it" in str(err.value)
    assert not _private_fallback(env).exists()


def test_xdg_cache_home_comes_before_the_home_folder(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "alutwin"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid by the XDG spec: ignored
    assert cache_dir() == tmp_path / "home" / ".cache" / "alutwin"
    assert not Path("relative").exists()


def test_a_read_only_home_falls_back_to_a_private_temporary_folder(env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(_unwritable_home(tmp_path)))
    with caplog.at_level(logging.INFO, logger="alutwin.cbuild"):
        first = cache_dir()
        again = cache_dir()
    assert first == again == _private_fallback(env)
    mode = first.stat().st_mode
    assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) & 0o077 == 0 and first.stat().st_uid == os.getuid()
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compile cache:")]
    assert len(chosen) == 1 and str(first) in chosen[0] and ".cache/alutwin" in chosen[0]  # logged once, with why


def test_an_unwritable_xdg_cache_falls_back_to_the_home_folder(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(_unwritable_home(tmp_path)))
    assert cache_dir() == tmp_path / "home" / ".cache" / "alutwin"


def test_the_temporary_folder_must_be_private(env, tmp_path, monkeypatch):
    """Libraries are loaded from the cache: a folder in a shared /tmp that others may write to, or a link someone
    planted there, is refused rather than used."""
    monkeypatch.setenv("HOME", str(_unwritable_home(tmp_path)))
    fallback = _private_fallback(env)
    fallback.mkdir()
    fallback.chmod(0o777)
    with pytest.raises(BuildError, match=r"no usable compile cache folder .*writable by others \(mode 777\)"):
        cache_dir()
    fallback.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fallback.symlink_to(elsewhere)
    with pytest.raises(BuildError, match="not a folder"):
        cache_dir()


@pytest.mark.skipif(cbuild.find_compiler() is None, reason="no C compiler")
def test_a_library_builds_into_the_fallback_folder(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(_unwritable_home(tmp_path)))
    path, compiled = cbuild.build_shared_library("int answer(void) { return 42; }", "answer")
    assert compiled and path.parent == _private_fallback(env) and path.is_file()
