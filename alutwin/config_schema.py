"""The JSON schema of a settings class (:mod:`alutwin.config`), with the descriptions of its numpydoc docstrings.

``deploy/schemas/generate.py`` writes one per settings file; editors that speak JSON schema then complete and
check the YAML as it is typed.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Annotated, Any

from pydantic import TypeAdapter

__all__ = ["json_schema"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(cls: type, *, title: str | None = None) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of the settings class ``cls``, as the files it reads are checked.

    Descriptions come from the docstrings: a class's text before its ``Parameters`` (or ``Attributes``) section,
    and each field's entry there.
    """
    schema = TypeAdapter(cls).json_schema()
    defs = schema.get("$defs", {})
    for c in _classes(cls):
        node = schema if c is cls else defs.get(c.__name__)
        if node is None:
            continue
        summary, fields = _docstring(c)
        if summary:
            node["description"] = summary
        else:
            node.pop("description", None)
        for name, prop in node.get("properties", {}).items():
            if name in fields:
                prop["description"] = fields[name]
    if title is not None:
        schema["title"] = title
    return {"$schema": _DIALECT, **schema}


def _classes(cls: type) -> list[type]:
    """``cls`` and every dataclass its fields hold, depth first."""
    seen: list[type] = []

    def visit(c: type) -> None:
        if c in seen:
            return
        seen.append(c)
        for hint in typing.get_type_hints(c).values():
            for t in _leaf_types(hint):
                if isinstance(t, type) and dataclasses.is_dataclass(t):
                    visit(t)

    visit(cls)
    return seen


_SECTION = re.compile(r"^(Parameters|Attributes)\n-+$", re.MULTILINE)
_ENTRY = re.compile(r"^(\w[\w, ]*?) ?: ?(.*)$")
_TYPE_LIKE = re.compile(r"[\w .,\[\]|]+")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def _clean(text: str) -> str:
    return " ".join(_ROLE.sub(r"`\1`", text).replace("``", "`").split())


def _docstring(cls: type) -> tuple[str, dict[str, str]]:
    """The text of a numpydoc class docstring before its parameters, and each parameter's description."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    match = _SECTION.search(doc)
    if match is None:
        return _clean(doc), {}
    summary = _clean(doc[: match.start()])
    body = doc[match.end() :]
    fields: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for n in names:
            fields[n] = _clean(" ".join(text))

    for line in body.splitlines():
        if line and not line[0].isspace():
            entry = _ENTRY.match(line)
            if entry is None:  # the next section starts
                break
            flush()
            names = [n.strip() for n in entry.group(1).split(",")]
            rest = entry.group(2).strip()
            typed = bool(_TYPE_LIKE.fullmatch(rest)) and not rest.endswith(".") and len(rest.split()) <= 8
            text = [] if typed else [rest]
        elif line.strip():
            text.append(line.strip())
    flush()
    return summary, fields


def _leaf_types(hint: Any) -> list[Any]:
    """The classes inside a type hint (through Annotated, unions and tuples)."""
    if hint is None:
        return []
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _leaf_types(args[0])
    if origin in (typing.Union, types.UnionType, tuple):
        return [t for a in args if a is not Ellipsis for t in _leaf_types(a)]
    return [hint] if isinstance(hint, type) else []
