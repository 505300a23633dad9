"""The package graph holds: nothing imports upwards, the shared layer imports nothing of ours, servers do not
import their own clients, and only apps/ starts servers of more than one package (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("alutwin", "plant", "identification", "twin", "controller", "apps")
"""Top-level packages, lowest first."""
MAY_IMPORT = {
    "alutwin": {"alutwin"},
    "plant": {"alutwin", "plant"},
    "identification": {"alutwin", "plant", "identification"},
    "twin": {"alutwin", "plant", "identification", "twin"},
    "controller": {"alutwin", "plant", "identification", "twin", "controller"},
    "apps": set(LAYERS),
}
"""Which of our packages each one may import (controller: the twin's client and result types only, below)."""
SERVER_MODULES = ("plant.service", "twin.serving")
"""Modules whose ``create_server`` starts a package's gRPC server."""


def _modules() -> dict[str, Path]:
    out = {}
    for top in LAYERS:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            if rel.parts[:2] == ("alutwin", "v1"):
                continue  # generated code
            out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


MODULES = _modules()


@functools.cache
def _tree(path: Path) -> ast.Module:
    """The parsed module at ``path`` (read once per test session)."""
    return ast.parse(path.read_text(encoding="utf-8"))


@functools.cache
def _imports(path: Path) -> tuple[tuple[int, str], ...]:
    """``(line, module)`` of every import of one of our packages in ``path``, at any depth."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return tuple((line, m) for line, m in found if m.split(".")[0] in LAYERS)


def test_the_graph_is_read_from_every_package():
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    assert "twin.serving.server" in MODULES and "alutwin.codec" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upwards(module: str):
    top = module.split(".")[0]
    bad = [f"line {line}: {m}" for line, m in _imports(MODULES[module]) if m.split(".")[0] not in MAY_IMPORT[top]]
    assert not bad, f"{module} imports a package above it: {bad}"


def test_imports_are_at_module_level():
    """No import of ours inside a function (the way to dodge an import cycle instead of fixing the graph)."""
    bad = []
    for module, path in MODULES.items():
        tree = _tree(path)
        top_level = {id(n) for n in tree.body}
        typing_only = [s for s in tree.body if isinstance(s, ast.If) and ast.unparse(s.test) == "TYPE_CHECKING"]
        top_level |= {id(n) for s in typing_only for n in s.body}  # a lazy package's names, for type checkers
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top_level:
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n and n.split(".")[0] in LAYERS for n in names):
                    bad.append(f"{module}:{node.lineno}")
    assert not bad, bad


def test_the_controller_uses_the_twin_through_its_client_only():
    bad = [
        f"{module}:{line}: {m}"
        for module, path in MODULES.items()
        if module.startswith("controller")
        for line, m in _imports(path)
        if m.startswith("twin") and m not in ("twin.client", "twin.results")
    ]
    assert not bad, bad


def test_servers_do_not_import_their_clients():
    pairs = {"twin.serving": ("twin.client", "twin.cli"), "plant.service": ("plant.client",)}
    bad = [
        f"{module}:{line}: {m}"
        for module, path in MODULES.items()
        for server, clients in pairs.items()
        if module.startswith(server)
        for line, m in _imports(path)
        if m.startswith(clients)
    ]
    assert not bad, bad


def test_only_apps_start_servers_of_more_than_one_package():
    bad = []
    for module, path in MODULES.items():
        servers = {s for _, m in _imports(path) for s in SERVER_MODULES if m == s or m.startswith(s + ".")}
        if len(servers) > 1 and not module.startswith("apps"):
            bad.append(f"{module}: {sorted(servers)}")
    assert not bad, bad
