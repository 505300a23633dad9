"""The JSON schemas of the settings files, made from the settings classes (``alutwin schema NAME``).

One schema per file under ``deploy/`` (``twin.yaml``, ``plant.yaml``, ``mpc.yaml``, ``bridge.yaml``), made by
:func:`alutwin.config_schema.json_schema`. They come from the code, so an installed package prints the schema of
exactly the version installed; ``deploy/schemas/generate.py`` writes them into the repository and a test keeps the
committed copies fresh. Point an editor's YAML support at one (a
``# yaml-language-server: $schema=schemas/twin.schema.json`` first line) for completion and checks as you type.
"""

from __future__ import annotations

import argparse
import json
import sys

from alutwin.config_schema import json_schema
from controller.config import ControllerConfig
from plant.config import PlantConfig
from twin.config import TwinConfig
from twin.historian import BridgeConfig

__all__ = ["SCHEMAS", "render", "run"]

SCHEMAS: dict[str, tuple[type, str]] = {
    "twin.schema.json": (TwinConfig, "alutwin twin serve --config"),
    "plant.schema.json": (PlantConfig, "alutwin plant serve --config"),
    "mpc.schema.json": (ControllerConfig, "alutwin control --mpc-config"),
    "bridge.schema.json": (BridgeConfig, "alutwin twin ingest --config"),
}
"""File name -> the settings class it describes and the title it gets."""


def render(name: str) -> str:
    """The text of the schema file ``name`` (properties in the order of the classes' fields).

    Raises
    ------
    KeyError
        ``name`` is not one of :data:`SCHEMAS`.
    """
    cls, title = SCHEMAS[name]
    return json.dumps(json_schema(cls, title=title), indent=2, ensure_ascii=False) + "\n"


def run(args: argparse.Namespace) -> int:
    """``alutwin schema NAME``: print the schema of ``NAME.yaml`` (twin, plant, mpc or bridge)."""
    sys.stdout.write(render(f"{args.name}.schema.json"))
    return 0
