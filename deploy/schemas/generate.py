"""Write the JSON schema of every settings file into this folder: ``python deploy/schemas/generate.py``.

One schema per file under ``deploy/`` (``twin.yaml``, ``plant.yaml``, ``mpc.yaml``, ``bridge.yaml``), made from the
settings classes by :func:`alutwin.config_schema.json_schema`; ``tests/alutwin/test_config_schemas.py`` regenerates them
and compares them with the committed ones. Point an editor's YAML support at them (e.g. a
``# yaml-language-server: $schema=schemas/twin.schema.json`` first line) to get completion and checks as you type.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alutwin.config_schema import json_schema
from controller.config import ControllerConfig
from plant.config import PlantConfig
from twin.config import TwinConfig
from twin.historian import BridgeConfig

HERE = Path(__file__).resolve().parent

SCHEMAS: dict[str, tuple[type, str]] = {
    "twin.schema.json": (TwinConfig, "alutwin twin serve --config"),
    "plant.schema.json": (PlantConfig, "alutwin plant serve --config"),
    "mpc.schema.json": (ControllerConfig, "alutwin control --mpc-config"),
    "bridge.schema.json": (BridgeConfig, "alutwin twin ingest --config"),
}
"""File name -> the settings class it describes and the title it gets."""


def render(name: str) -> str:
    """The text of the schema file ``name`` (properties in the order of the classes' fields)."""
    cls, title = SCHEMAS[name]
    return json.dumps(json_schema(cls, title=title), indent=2, ensure_ascii=False) + "\n"


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
