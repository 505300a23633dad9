"""Generate the Python code of every ``.proto`` file under ``proto/`` (``make proto``).

``proto/`` is the include path, so ``.proto`` files import each other as ``import "alutwin/v1/common.proto";``
and the generated modules land in the ``alutwin`` package as ``alutwin/v1/*_pb2*.py``, importing each other as
``from alutwin.v1 import ...``, with no post-processing: the protobuf package ``alutwin.v1`` and the Python package
``alutwin.v1`` are one name. Usage::

    python proto/generate.py [OUT_DIR]

``OUT_DIR`` defaults to the repository root (in place); ``tests/alutwin/test_proto_fresh.py`` generates into a
temporary directory and compares with the committed files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["GENERATED_SUFFIXES", "PROTO_ROOT", "REPO_ROOT", "generate", "generated_names", "main", "proto_files"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The ``.proto`` files under ``proto_root``, relative to it (``alutwin/v1/plant.proto``, ...), sorted."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def generated_names(proto: Path) -> list[Path]:
    """The files generated from one ``.proto``, relative to the output root (relative path in, paths out)."""
    stem = proto.with_suffix("")
    return [stem.parent / (stem.name + suffix) for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path | None = None, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run ``grpc_tools.protoc`` over every ``.proto`` under ``proto_root``.

    Parameters
    ----------
    out_dir : Path, optional
        Where the generated tree goes (``out_dir/alutwin/v1/...``); default the repository root (in place).
    proto_root : Path
        The include path: the folder that holds ``alutwin/v1/*.proto``.

    Returns
    -------
    list of Path
        The generated files, relative to ``out_dir``.
    """
    import grpc_tools  # the package directory holds the well-known types (google/protobuf/*.proto)

    out = Path(out_dir).resolve() if out_dir is not None else REPO_ROOT
    out.mkdir(parents=True, exist_ok=True)
    protos = proto_files(proto_root)
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_root}")
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(p.as_posix() for p in protos),
    ]
    result = subprocess.run(cmd, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return [name for p in protos for name in generated_names(p)]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python proto/generate.py [OUT_DIR]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python proto/generate.py [OUT_DIR]", file=sys.stderr)
        return 2
    out = Path(args[0]) if args else None
    for path in generate(out):
        print(path.as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
