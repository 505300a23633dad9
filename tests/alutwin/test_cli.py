"""The dispatcher's conventions (alutwin.cli), on a fake command: exit codes, one-line errors, common options,
lazy command functions, logging formats, output folders."""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import types
from pathlib import Path

import pytest

import alutwin
import alutwin.cli as cli
from alutwin.config import ConfigError


class _EntryPoint:
    def __init__(self, name, register):
        self.name = name
        self._register = register

    def load(self):
        return self._register


def _fake_commands(monkeypatch, behaviour):
    """Install one command ``fake`` (with a nested ``fake sub`` action) whose function does ``behaviour(args)``."""

    def register(sub):
        p = sub.add_parser("fake", help="a fake command")
        acts = p.add_subparsers(dest="act", required=True)
        q = acts.add_parser("sub")
        q.add_argument("--n", type=int, required=True)
        q.set_defaults(func=behaviour, default_log_level="info")

    def broken(_sub):
        raise ImportError("no such library")

    monkeypatch.setattr(
        cli, "entry_points", lambda group: [_EntryPoint("fake", register), _EntryPoint("broken", broken)]
    )


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (cli.CliError("bad --n"), 2, "alutwin fake sub: error: bad --n"),
        (
            ConfigError("twin.yaml", ["port: expected an integer", "host: bad"]),
            2,
            "twin.yaml: port: expected an integer; host: bad",
        ),
        (FileNotFoundError("no file x.yaml"), 2, "no file x.yaml"),
        (RuntimeError("solver\nfailed"), 1, "RuntimeError: solver failed (--debug for the traceback)"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_exit_codes_and_one_line_errors(monkeypatch, capsys, exc, code, text):
    def fail(_args):
        raise exc

    _fake_commands(monkeypatch, fail)
    assert cli.main(["fake", "sub", "--n", "1"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert text in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    def fail(_args):
        raise RuntimeError("boom")

    _fake_commands(monkeypatch, fail)
    assert cli.main(["fake", "sub", "--n", "1", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "alutwin fake sub: error: RuntimeError: boom"


def test_usage_errors_exit_2(monkeypatch, capsys):
    _fake_commands(monkeypatch, lambda args: 0)
    for argv in (["fake", "sub"], ["nope"], ["fake", "sub", "--n", "x"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_version(monkeypatch, capsys):
    _fake_commands(monkeypatch, lambda args: 0)
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"alutwin {alutwin.__version__}"


def test_common_options_reach_every_leaf_before_or_after_the_command(monkeypatch):
    seen = []
    _fake_commands(monkeypatch, lambda args: seen.append(args) or 0)
    assert cli.main(["--quiet", "fake", "sub", "--n", "1"]) == 0
    assert cli.main(["fake", "sub", "--n", "2", "--log-level", "error", "--log-format", "json"]) == 0
    assert cli.main(["fake", "sub", "--n", "3"]) == 0
    assert [a.quiet for a in seen] == [True, False, False]
    assert seen[1].log_level == "error" and seen[1].log_format == "json"
    assert seen[2].log_level is None and seen[2].log_format == "text"


def test_default_log_level_of_a_command_and_quiet(monkeypatch):
    levels = []
    _fake_commands(monkeypatch, lambda args: levels.append(logging.getLogger().level) or 0)
    cli.main(["fake", "sub", "--n", "1"])  # the command's default_log_level="info"
    cli.main(["fake", "sub", "--n", "1", "-q"])  # quiet: warnings only
    cli.main(["fake", "sub", "--n", "1", "-q", "--log-level", "debug"])  # an explicit level wins
    assert levels == [logging.INFO, logging.WARNING, logging.DEBUG]


def test_broken_command_is_reported_not_fatal(monkeypatch, capsys):
    _fake_commands(monkeypatch, lambda args: 0)
    assert cli.main(["broken"]) == 2
    assert "unavailable in this installation (ImportError: no such library)" in capsys.readouterr().err


def test_lazy_function_is_imported_only_when_run(monkeypatch):
    module = types.ModuleType("_alutwin_fake_lazy")
    module.run = lambda args: args.n + 40
    monkeypatch.setitem(sys.modules, "_alutwin_fake_lazy", module)
    _fake_commands(monkeypatch, "_alutwin_fake_lazy:run")
    assert cli.main(["fake", "sub", "--n", "2"]) == 42


def test_json_log_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    cli.configure_logging("info", "json")
    try:
        logging.getLogger("alutwin.test").info("served %d", 3)
        logging.getLogger("alutwin.test").debug("hidden")
    finally:
        cli.configure_logging("warning", "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["message"] == "served 3" and doc["level"] == "INFO" and doc["logger"] == "alutwin.test"
    assert doc["time"].endswith("+00:00")


def test_configure_logging_rejects_unknown_names():
    with pytest.raises(ValueError, match="log level"):
        cli.configure_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        cli.configure_logging("info", "xml")


def test_progress_only_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not cli.show_progress(argparse.Namespace(quiet=False))
    monkeypatch.setattr(sys, "stderr", Tty())
    assert cli.show_progress(argparse.Namespace(quiet=False))
    assert not cli.show_progress(argparse.Namespace(quiet=True))


def test_fresh_output_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = cli.fresh_output_dir("demo-output")
    b = cli.fresh_output_dir("demo-output")
    assert a != b and a.is_dir() and b.is_dir()
    assert a.parent == tmp_path and a.name.startswith("demo-output-")


def test_output_dir_errors(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(cli.CliError, match="is a file, not a folder"):
        cli.output_dir(f)
    with pytest.raises(cli.CliError, match=r"file.txt is a file, not a folder"):
        cli.output_dir(f / "sub" / "deeper")
    made = cli.output_dir(tmp_path / "a" / "b")
    assert made.is_dir() and made == Path(tmp_path / "a" / "b")


def test_command_output_dir_uses_out_or_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = cli.command_output_dir(tmp_path / "given", "x-output")
    assert given == tmp_path / "given" and given.is_dir()
    fresh = cli.command_output_dir(None, "x-output")
    assert fresh.parent == tmp_path and fresh.name.startswith("x-output-") and fresh.is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(cli.CliError, match="is a file, not a folder"):
        cli.command_output_dir(tmp_path / "f", "x-output")
