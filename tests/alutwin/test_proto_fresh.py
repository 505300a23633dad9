"""The generated protobuf code is up to date with the .proto files (regenerated and compared byte for byte)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_generate():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proto-gen")
    generate.generate(out)
    return out


def test_generated_code_is_fresh(fresh):
    assert generate.REPO_ROOT == REPO
    protos = generate.proto_files()
    assert Path("alutwin/v1/plant.proto") in protos and Path("alutwin/v1/common.proto") in protos
    stale = []
    for proto in protos:
        for name in generate.generated_names(proto):
            committed = REPO / name
            if not committed.is_file() or committed.read_bytes() != (fresh / name).read_bytes():
                stale.append(name.as_posix())
    assert not stale, f"generated protobuf code is out of date: {stale}; run `make proto` and commit the result"


def test_no_generated_file_without_its_proto():
    expected = {name for proto in generate.proto_files() for name in generate.generated_names(proto)}
    present = {
        p.relative_to(REPO) for suffix in generate.GENERATED_SUFFIXES for p in (REPO / "alutwin").rglob(f"*{suffix}")
    }
    orphans = sorted(p.as_posix() for p in present - expected)
    assert not orphans, f"generated files whose .proto is gone: {orphans}; delete them and run `make proto`"


def test_generated_modules_import_under_the_alutwin_package():
    plant_pb2 = importlib.import_module("alutwin.v1.plant_pb2")
    assert plant_pb2.DESCRIPTOR.package == "alutwin.v1"
    assert plant_pb2.DESCRIPTOR.name == "alutwin/v1/plant.proto"
    assert [d.name for d in plant_pb2.DESCRIPTOR.dependencies] == ["alutwin/v1/common.proto"]
    assert "PlantService" in plant_pb2.DESCRIPTOR.services_by_name


def test_no_top_level_proto_package():
    """``proto`` is proto-plus's import name: the contract's folder is no Python package and is not installed."""
    assert not list((REPO / "proto").rglob("__init__.py"))
    include = re.search(
        r"\[tool.setuptools.packages.find\]\s*include = \[([^\]]*)\]", (REPO / "pyproject.toml").read_text()
    )
    assert include is not None
    packages = re.findall(r'"([^"]+)"', include.group(1))
    assert "alutwin*" in packages and not any(p.startswith("proto") for p in packages)


def _buf() -> str:
    """The Buf CLI of the dev extras (buf-bin), beside this interpreter in the venv, else on PATH."""
    here = Path(sys.executable).parent / "buf"
    found = str(here) if here.is_file() else shutil.which("buf")
    assert found, "the Buf CLI is missing: install the dev extras (pip install -e '.[dev]', buf-bin)"
    return found


def test_buf_lint_is_clean_and_would_catch_an_undocumented_field(tmp_path):
    clean = subprocess.run([_buf(), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # the same configuration on a copy with one undocumented field: COMMENTS reports it
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    twin = tmp_path / "proto" / "alutwin" / "v1" / "twin.proto"
    text = twin.read_text()
    anchor = "message ListModelsRequest {\n"
    assert anchor in text
    twin.write_text(text.replace(anchor, anchor + "  uint32 undocumented_field = 99;\n"))
    broken = subprocess.run([_buf(), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "undocumented_field" in broken.stdout + broken.stderr
