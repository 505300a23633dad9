"""Write the JSON schema of every settings file into this folder: ``python deploy/schemas/generate.py``.

One schema per file under ``deploy/`` (``twin.yaml``, ``plant.yaml``, ``mpc.yaml``, ``bridge.yaml``), made from the
settings classes by :mod:`apps.schemas` (``alutwin schema NAME`` prints one from an installed package);
``tests/alutwin/test_config_schemas.py`` regenerates them
and compares them with the committed ones. Point an editor's YAML support at them (e.g. a
``# yaml-language-server: $schema=schemas/twin.schema.json`` first line) to get completion and checks as you type.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apps.schemas import SCHEMAS, render

HERE = Path(__file__).resolve().parent


def generate(out: Path = HERE) -> list[Path]:
    """Write every schema into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMAS:
        path = out / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: this one)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
