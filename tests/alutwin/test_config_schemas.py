"""The JSON schemas under deploy/schemas/ are fresh (regenerated and compared), and every example settings file
under deploy/ validates against its schema and loads through its settings class; schema and loader agree on
a few wrong files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from alutwin.config import ConfigError, read_yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "deploy" / "schemas"


def _load_generate():
    spec = importlib.util.spec_from_file_location("schemas_generate", SCHEMAS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()
EXAMPLES = {name: REPO / "deploy" / name.replace(".schema.json", ".yaml") for name in generate.SCHEMAS}


def test_schemas_are_fresh(tmp_path):
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == {
        "twin.schema.json",
        "plant.schema.json",
        "mpc.schema.json",
        "bridge.schema.json",
    }
    stale = [
        p.name for p in written if not (SCHEMAS / p.name).is_file() or (SCHEMAS / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"JSON schemas out of date: {stale}; run `python deploy/schemas/generate.py` and commit them"
    committed = {p.name for p in SCHEMAS.glob("*.json")}
    assert committed == set(generate.SCHEMAS), f"schemas without a settings class: {committed - set(generate.SCHEMAS)}"


@pytest.mark.parametrize("name", sorted(generate.SCHEMAS))
def test_each_example_validates_against_its_schema_and_loads(name):
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = read_yaml(EXAMPLES[name])
    jsonschema.Draft202012Validator(schema).validate(data)
    cls, _ = generate.SCHEMAS[name]
    config = cls.from_yaml(EXAMPLES[name])
    assert isinstance(config, cls)
    first = EXAMPLES[name].read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=schemas/{name}"  # editors find the schema


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("twin.schema.json", {"prot": 1}),
        ("twin.schema.json", {"port": 70000}),
        ("twin.schema.json", {"historian": {"max_ingest_streams": 0}}),
        ("twin.schema.json", {"engine": "gpu"}),
        ("twin.schema.json", {"token_env": "not a name"}),
        ("plant.schema.json", {"n_cells": 0}),
        ("plant.schema.json", {"noise_std": [1, 2]}),
        ("plant.schema.json", {"scenario": [{"kind": "drift", "at_s": 0, "parameter": "k3"}]}),
        (
            "plant.schema.json",
            {"scenario": [{"kind": "offset_sensor", "at_s": 0, "state": "T_bath", "offset": 1, "factor": 2}]},
        ),
        (
            "plant.schema.json",
            {"scenario": [{"kind": "drift", "at_s": 0, "parameter": "k3", "factor": 1, "cells": []}]},
        ),
        ("mpc.schema.json", {"mpc": {"hessian": "newton"}}),
        ("mpc.schema.json", {"mpc": {"weights": {"move": [1, 2]}}}),
        ("mpc.schema.json", {"safety": {"watchdog_s": -1}}),
        ("bridge.schema.json", {"every": 0}),
        ("bridge.schema.json", {"backoff": {"factor": 0.5}}),
    ],
)
def test_schema_and_loader_both_refuse(name, change):
    schema = json.loads((SCHEMAS / name).read_text())
    data = read_yaml(EXAMPLES[name])
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(data)
    cls, _ = generate.SCHEMAS[name]
    with pytest.raises(ConfigError):
        cls.from_mapping(data)


def test_schema_command_prints_the_committed_schemas(capsys):
    """``alutwin schema NAME`` prints what the repository commits, for every schema (an installed package has no
    deploy/ folder: this command is where its users get them)."""
    from alutwin.cli import main
    from apps.commands import SCHEMA_NAMES

    assert {f"{n}.schema.json" for n in SCHEMA_NAMES} == set(generate.SCHEMAS)
    for name in SCHEMA_NAMES:
        assert main(["schema", name]) == 0
        assert capsys.readouterr().out == (SCHEMAS / f"{name}.schema.json").read_text()
