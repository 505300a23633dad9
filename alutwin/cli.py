"""The ``alutwin`` command.

Each package contributes sub-commands through the ``alutwin.commands`` entry-point group (see
``pyproject.toml``): an entry point is a function ``register(subparsers)`` that adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code. The dispatcher here knows
no package above ``plant``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["main", "build_parser", "configure_logging", "CliError"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CliError(Exception):
    """A user error on the command line: printed as one line, exit code 2."""


def configure_logging(level: int) -> None:
    """Log the records of ``level`` and above to stderr, one line each: time, level, logger and message.

    A process-wide setting (:func:`logging.basicConfig`): only a command's entry point calls it.
    """
    logging.basicConfig(level=level, format=_LOG_FORMAT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alutwin",
        description="Digital twin and model-based control of Hall-Heroult cells on sparse neural surrogates.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="alutwin.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # one broken plug-in must not take the other commands down
            _register_broken(sub, ep.name, f"{type(exc).__name__}: {exc}")
    return parser


def _register_broken(sub: argparse._SubParsersAction, name: str, why: str) -> None:
    def fail(_args: argparse.Namespace) -> int:
        raise CliError(f"this command is unavailable in this installation ({why})")

    if name not in sub.choices:
        p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)
        p.set_defaults(func=fail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError) as exc:
        print(f"alutwin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
