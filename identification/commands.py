"""The parser of ``alutwin study`` (entry point ``alutwin.commands``).

Light on purpose (the standard library and the table of model kinds), so that ``alutwin --help`` does not import
torch: ``func`` names :mod:`identification.study`'s run function as ``"module:function"``, imported only when the
command runs. The defaults quoted in the help are :class:`identification.study.StudyConfig`'s
(``tests/alutwin/test_commands.py`` checks them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from identification.kinds import KINDS

__all__ = ["register_study"]


def register_study(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin study``."""
    p = subparsers.add_parser("study", help="reproduce and extend the published identification study; writes a report")
    p.add_argument("--out", type=Path, help="output folder (default: a new ./study-output-<UTC time>)")
    p.add_argument("--quick", action="store_true", help="a tiny study (seconds), for smoke tests")
    p.add_argument("--sizes", type=int, nargs="+", help="training set sizes (default 10 20 40)")
    p.add_argument("--kinds", nargs="+", choices=sorted(KINDS), help="model kinds (default: all)")
    p.add_argument("--members", type=int, help="ensemble size (default 10)")
    p.add_argument("--epochs", type=int, help="training epochs (default 100)")
    p.add_argument("--test", type=int, help="test trajectories (default 100)")
    p.add_argument("--steps", type=int, help="steps per trajectory (default 5000)")
    p.add_argument(
        "--test-sets",
        nargs="*",
        choices=["closed-loop", "outside-box", "current-ramps"],
        help="test sets beyond the training excitation, each model of the largest size is also scored on "
        "(default: all three; none with an empty list)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--resume", action="store_true", help="keep finished entries of an earlier results.json")
    p.set_defaults(func="identification.study:_run")
