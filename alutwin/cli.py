"""The ``alutwin`` command.

Each package contributes sub-commands through the ``alutwin.commands`` entry-point group (see
``pyproject.toml``): an entry point is a function ``register(subparsers)`` that adds its parser and sets
``func``, either to a callable taking the parsed arguments and returning an exit code or to the string
``"package.module:function"`` of one. The string form is how commands stay light: the dispatcher imports the
module only when that command runs, so ``alutwin --help`` never pays for torch or CasADi. The dispatcher
knows no package of ours.

Conventions every command gets from here:

- every leaf command takes ``-q/--quiet``, ``--log-level``, ``--log-format text|json`` and ``--debug``;
- exit code 2 for usage and configuration mistakes, 1 for failures at run time, 130 on Ctrl-C, each with one
  line on stderr (``alutwin <command>: error: ...``) and no traceback unless ``--debug``;
- progress bars only on a terminal (:func:`show_progress`), outputs into a fresh folder of the working
  directory unless ``--out`` names one (:func:`fresh_output_dir`, :func:`output_dir`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from alutwin import __version__

__all__ = [
    "USAGE_ERRORS",
    "CliError",
    "build_parser",
    "command_output_dir",
    "configure_logging",
    "fresh_output_dir",
    "main",
    "output_dir",
    "show_progress",
]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")


class CliError(Exception):
    """A user error on the command line: printed as one line, exit code 2."""


USAGE_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    ValueError,  # alutwin.config.ConfigError is one: bad settings, every problem named
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)
"""The exceptions that mean the user asked for something that cannot be done: exit code 2."""


# ---------------------------------------------------------------------------------------------------------------
# logging


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` (+ ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


_HANDLER_MARK = "_alutwin_cli_handler"


def configure_logging(level: int | str = logging.WARNING, fmt: str = "text") -> None:
    """Log the records of ``level`` and above to stderr, one line each: ``text`` (time, level, logger, message)
    or ``json`` (one object per line, for log collectors).

    A process-wide setting: only the dispatcher (or a command's own ``main``) calls it. Calling it again
    replaces the handler it installed before and leaves every other handler alone.

    Raises
    ------
    ValueError
        ``level`` or ``fmt`` is not one of the known names.
    """
    if isinstance(level, str):
        if level.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        level = getattr(logging, level.upper())
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(_LOG_FORMAT))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------
# helpers for commands


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command draws progress bars: not ``--quiet``, and stderr is a terminal (no ``\\r`` in logs)."""
    if getattr(args, "quiet", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def fresh_output_dir(stem: str, base: str | Path | None = None) -> Path:
    """Create and return a new folder ``<base>/<stem>-<UTC yyyymmdd-HHMMSS>`` (``-2``, ``-3``... if taken).

    ``base`` defaults to the working directory: a command's outputs never land in committed files by default.

    Raises
    ------
    CliError
        The folder cannot be created (read-only working directory...).
    """
    root = Path.cwd() if base is None else Path(base)
    name = f"{stem}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"
    for n in range(1, 1000):
        path = root / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CliError(f"cannot create the output folder {path} ({exc.strerror or exc})") from None
        return path
    raise CliError(f"cannot find a free output folder name {root / name}-N")


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output folder a user named (parents too) and return it.

    Raises
    ------
    CliError
        One line naming ``flag`` and the path: it is a file, lies under a file, or cannot be created or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CliError(f"{flag} {p}: is a file, not a folder")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise CliError(f"{flag} {p}: {parent} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{flag} {p}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {p}: the folder is not writable")
    return p


def command_output_dir(out: str | Path | None, stem: str) -> Path:
    """A command's output folder: :func:`output_dir` of ``out`` when the user gave ``--out``, else a
    :func:`fresh_output_dir` named after ``stem`` (``"demo-output"`` -> ``./demo-output-<UTC time>``).

    Raises
    ------
    CliError
        The folder cannot be used or created (one line naming the path).
    """
    return fresh_output_dir(stem) if out is None else output_dir(out)


# ---------------------------------------------------------------------------------------------------------------
# the parser


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes; on a leaf their defaults are suppressed so that a value given before the
    command name (``alutwin --quiet demo``) survives."""
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = _CommonGroup(parser)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars", **({"default": False} | d))
    g.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log records of this level and above (default: warning, info for servers)",
        **({"default": None} | d),
    )
    g.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or one JSON object each (default text)",
        **({"default": "text"} | d),
    )
    g.add_argument("--debug", action="store_true", help="show the traceback of an error", **({"default": False} | d))


class _CommonGroup:
    """The "common options" group, skipping an option the command already defines itself."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser
        self._group = parser.add_argument_group("common options")

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        if not any(f in self._parser._option_string_actions for f in flags):
            self._group.add_argument(*flags, **kwargs)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _decorate_leaves(parser: argparse.ArgumentParser, seen: set[int]) -> None:
    sub = _subparsers(parser)
    if sub is None:
        _add_common(parser, top=False)
        parser.set_defaults(_prog=parser.prog)
        return
    for child in sub.choices.values():
        if id(child) not in seen:
            seen.add(id(child))
            _decorate_leaves(child, seen)


def build_parser() -> argparse.ArgumentParser:
    """The ``alutwin`` parser with every installed command (entry-point group ``alutwin.commands``)."""
    parser = argparse.ArgumentParser(
        prog="alutwin",
        description="Digital twin and model-based control of Hall-Heroult cells on sparse neural surrogates.",
    )
    parser.add_argument("--version", action="version", version=f"alutwin {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="alutwin.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # one broken plug-in must not take the other commands down
            _register_broken(sub, ep.name, f"{type(exc).__name__}: {exc}")
    _decorate_leaves(parser, set())
    return parser


def _register_broken(sub: argparse._SubParsersAction, name: str, why: str) -> None:
    def fail(_args: argparse.Namespace) -> int:
        raise CliError(f"this command is unavailable in this installation ({why})")

    if name not in sub.choices:
        p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)
        p.set_defaults(func=fail)


def _resolve(func: Callable[[argparse.Namespace], int] | str) -> Callable[[argparse.Namespace], int]:
    if callable(func):
        return func
    module, _, attr = str(func).partition(":")
    return getattr(importlib.import_module(module), attr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``alutwin`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = getattr(args, "_prog", f"alutwin {args.command}")
    debug = bool(getattr(args, "debug", False))
    try:
        level = args.log_level or ("warning" if args.quiet else getattr(args, "default_log_level", "warning"))
        configure_logging(level, args.log_format)
        return int(_resolve(args.func)(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            traceback.print_exc()
            print(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)} (--debug for the traceback)", file=sys.stderr)
        return 1
