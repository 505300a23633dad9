"""The light command modules (``plant.commands``, ``identification.commands``, ``twin.commands``,
``apps.commands``): their literal defaults equal the real ones, every entry point is listed by ``alutwin --help``
and runs a function that exists, and building the parser imports no heavy dependency."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import alutwin.cli
from apps import commands as apps_commands
from apps.fleet.fit import CONFIG_FLAGS as FLEET_FLAGS
from apps.fleet.fit import FleetFitConfig
from controller.closed_loop import CONTROLLERS
from identification.online import REFIT_MODES
from identification.study import StudyConfig
from plant import commands as plant_commands
from plant.datasets import DEFAULT_ENGINE, PUBLISHED_SIZES
from plant.excitation import EXCITATIONS
from plant.service import DEFAULT_PORT as PLANT_PORT
from plant.simulator import ENGINES
from twin import commands as twin_commands
from twin.config import DEFAULT_PORT as TWIN_PORT
from twin.historian import BridgeConfig

HEAVY = ("torch", "casadi", "grpc", "numpy", "pydantic", "matplotlib", "tqdm", "safetensors", "yaml")
"""Modules that the parsers must not import: ``alutwin --help`` would pay for them."""

COMMANDS = ("plant.commands", "identification.commands", "twin.commands", "apps.commands")


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, parser)`` of every leaf command under ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


@pytest.fixture(scope="module")
def leaves() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    return dict(_leaves(alutwin.cli.build_parser()))


def test_literal_defaults_equal_the_real_ones():
    assert plant_commands.ENGINE_NAMES == tuple(sorted(ENGINES))
    assert plant_commands.DEFAULT_ENGINE == DEFAULT_ENGINE
    assert plant_commands.EXCITATION_NAMES == tuple(sorted(EXCITATIONS))
    assert plant_commands.PUBLISHED_SIZES == PUBLISHED_SIZES
    assert plant_commands.DEFAULT_PORT == PLANT_PORT
    assert twin_commands.DEFAULT_PORT == TWIN_PORT
    bridge = {f.name: f.default for f in dataclasses.fields(BridgeConfig)}
    assert twin_commands.BRIDGE_DEFAULTS == {k: bridge[k] for k in twin_commands.BRIDGE_DEFAULTS}
    assert twin_commands.REFIT_MODES == REFIT_MODES
    assert apps_commands.CONTROLLERS == CONTROLLERS
    fleet_fit = _actions(dict(_leaves(alutwin.cli.build_parser()))[("fleet", "fit")])
    assert set(FLEET_FLAGS) == {f.name for f in dataclasses.fields(FleetFitConfig)}
    for field in dataclasses.fields(FleetFitConfig):
        default = None if field.default is dataclasses.MISSING else field.default  # cells: required by both
        assert fleet_fit[FLEET_FLAGS[field.name]].default == default, field.name
    assert fleet_fit["cells"].required


def test_the_defaults_the_help_quotes_are_the_real_ones(leaves):
    study = _actions(leaves[("study",)])
    real = StudyConfig(out=".")
    quoted = {"sizes": "sizes", "members": "n_members", "epochs": "epochs", "test": "n_test", "steps": "n_steps"}
    for dest, field in quoted.items():
        value = getattr(real, field)
        text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert re.search(r"\(default ([^)]*)\)", study[dest].help).group(1) == text, dest
    ingest = _actions(leaves[("twin", "ingest")])
    for dest, value in twin_commands.BRIDGE_DEFAULTS.items():
        assert f"(default {value})" in ingest[dest].help, dest
    serve = leaves[("plant", "serve")]
    assert f"127.0.0.1:{plant_commands.DEFAULT_PORT}" in serve.description
    assert study["kinds"].choices == sorted(StudyConfig.__dataclass_fields__["kinds"].default)


def test_every_command_runs_a_function_that_exists(leaves):
    assert len(leaves) == 15
    for path, parser in leaves.items():
        func = parser.get_default("func")
        module, _, name = func.partition(":")
        assert module and name, (path, func)
        assert callable(getattr(importlib.import_module(module), name)), (path, func)


def test_the_dispatcher_owns_quiet_and_no_command_has_its_own(leaves):
    for path, parser in leaves.items():
        groups = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
        assert groups["quiet"] == "common options", path
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--no-progress" not in flags, path


def test_servers_log_at_info_and_outputs_default_to_a_fresh_folder(leaves):
    servers = {("plant", "serve"), ("twin", "serve"), ("twin", "ingest"), ("identify",)}
    for path, parser in leaves.items():
        assert parser.get_default("default_log_level") == ("info" if path in servers else None), path
        out = _actions(parser).get("out")
        if out is not None:
            assert out.default is None and not out.required and "a new ./" in out.help, path


def test_control_takes_a_remote_twin_and_plant(leaves):
    args = leaves[("control",)].parse_args(
        ["--twin", "t:1", "--plant", "p:2", "--twin-tls-ca", "ca.pem", "--plant-tls-ca", "pa.pem", "--cells", "0,2"]
    )
    assert (args.twin, args.plant, args.twin_tls_ca, args.plant_tls_ca, args.cells) == (
        "t:1",
        "p:2",
        "ca.pem",
        "pa.pem",
        "0,2",
    )
    assert (args.twin_token_env, args.plant_token_env) == ("ALUTWIN_TWIN_TOKEN", "ALUTWIN_PLANT_TOKEN")
    local = leaves[("control",)].parse_args([])
    assert (local.twin, local.plant, local.cells, local.models, local.out) == (None, None, "0", None, None)


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_entry_point_and_imports_nothing_heavy():
    code = (
        "import contextlib, io, json, sys\n"
        f"import {', '.join(COMMANDS)}\n"
        f"after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "from alutwin.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        f"after_help = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps([after_import, after_help, out.getvalue()]))\n"
    )
    after_import, after_help, text = json.loads(_run_python(code))
    assert after_import == [] and after_help == []
    names = {ep.name for ep in entry_points(group="alutwin.commands")}
    assert names == {
        "simulate",
        "plant",
        "plant-demo",
        "study",
        "twin",
        "identify",
        "demo",
        "control",
        "online-demo",
        "schema",
        "health",
        "fleet",
    }
    listed = set(re.findall(r"^    (\S+)", text, flags=re.MULTILINE))
    assert names <= listed and "unavailable" not in text
    assert {ep.value.partition(":")[0] for ep in entry_points(group="alutwin.commands")} == set(COMMANDS)


def test_without_out_a_command_writes_into_a_fresh_folder_of_the_working_directory(tmp_path):
    argv = [sys.executable, "-m", "alutwin", "simulate", "--train", "1", "--test", "0", "--steps", "5", "--quiet"]
    runs = [subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120) for _ in range(2)]
    for done in runs:
        assert done.returncode == 0 and done.stderr == "", done.stderr
    folders = sorted(p for p in tmp_path.iterdir() if p.name.startswith("simulate-output-"))
    assert len(folders) == 2  # a second run never writes into the first one's folder
    for folder, done in zip(folders, runs, strict=True):
        assert [p.name for p in folder.iterdir()] == ["train.safetensors"]
        assert f"output in {folder}" in done.stdout
