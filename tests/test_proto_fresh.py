"""The generated protobuf code is up to date with the .proto files (regenerated and compared byte for byte)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from proto import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proto-gen")
    generate.generate(out)
    return out


def test_generated_code_is_fresh(fresh):
    assert generate.REPO_ROOT == REPO
    protos = generate.proto_files()
    assert Path("proto/alutwin/v1/plant.proto") in protos and Path("proto/alutwin/v1/common.proto") in protos
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
        p.relative_to(REPO) for suffix in generate.GENERATED_SUFFIXES for p in (REPO / "proto").rglob(f"*{suffix}")
    }
    orphans = sorted(p.as_posix() for p in present - expected)
    assert not orphans, f"generated files whose .proto is gone: {orphans}; delete them and run `make proto`"


def test_generated_modules_import_as_the_proto_package():
    plant_pb2 = importlib.import_module("proto.alutwin.v1.plant_pb2")
    assert plant_pb2.DESCRIPTOR.package == "alutwin.v1"
    assert plant_pb2.DESCRIPTOR.name == "proto/alutwin/v1/plant.proto"
    assert [d.name for d in plant_pb2.DESCRIPTOR.dependencies] == ["proto/alutwin/v1/common.proto"]
    assert "PlantService" in plant_pb2.DESCRIPTOR.services_by_name
