"""The config base of every settings file: frozen pydantic dataclasses, YAML loading, one-line errors.

A settings class derives from :class:`Config` and is made with :func:`config_dataclass`: a frozen dataclass
(``dataclasses.replace``, ``asdict`` and ``fields`` work on it, and ``replace`` validates again) whose fields use
the annotated types below, so that every file checks a port, a host or a positive number the same way. Required
fields have no default; YAML only fills them. Every mistake is reported at once, in one :class:`ConfigError` (a
``ValueError``) that names each key::

    twin.yaml: max_workers: must be >= 1, got 0; historian.max_ingest_streams: must be an integer, got 'x'; unknown key 'prot' (did you mean 'port'?)

Paths (:data:`ConfigPath`) in a YAML file are relative to the file's folder. :func:`json_schema` gives the JSON
schema of a settings class, with the field descriptions of its numpydoc docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import core_schema
from typing_extensions import dataclass_transform

__all__ = [
    "CONFIG",
    "Address",
    "Config",
    "ConfigError",
    "ConfigPath",
    "EnvName",
    "Flag",
    "Host",
    "Int",
    "NonNegativeInt",
    "NonNegativeNumber",
    "Number",
    "OneOf",
    "Port",
    "PositiveInt",
    "PositiveNumber",
    "Text",
    "Token",
    "TOKEN_MIN_LENGTH",
    "config_dataclass",
    "describe_errors",
    "json_schema",
    "key_path",
    "load_mapping",
    "load_yaml",
    "read_yaml",
    "validate",
]

C = TypeVar("C")

CONFIG = ConfigDict(extra="forbid")
"""The pydantic settings of every config class: unknown keys are refused (strictness is per type, below)."""

_BASE_DIR = "base_dir"  # key of the validation context: the folder relative paths are taken from

TOKEN_MIN_LENGTH = 16
"""Shortest bearer token a config accepts."""

# -- field types -------------------------------------------------------------------------------------------------
# Strict: a YAML 'yes', "5" or 5.0 is not silently taken for a bool or an int; an int is a valid number.

Int = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite number (an int is accepted and stored as float)."""
PositiveNumber = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
Host = Annotated[str, Strict(), Field(min_length=1)]
"""An address to bind or reach (a host name or an IP address)."""
Address = Annotated[str, Strict(), Field(min_length=1)]
"""A gRPC target, e.g. ``host:port``."""
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]
"""A TCP port; 0 picks a free one."""

_ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _env_name(value: str) -> str:
    if not re.fullmatch(_ENV_PATTERN, value):
        raise ValueError(f"must be an environment variable name, got {value!r}")
    return value


def _token(value: str) -> str:
    if len(value) < TOKEN_MIN_LENGTH:
        raise ValueError(f"must be a string of at least {TOKEN_MIN_LENGTH} characters")  # never echo a secret
    return value


EnvName = Annotated[
    str, Strict(), AfterValidator(_env_name), WithJsonSchema({"type": "string", "pattern": _ENV_PATTERN})
]
Token = Annotated[
    str, Strict(), AfterValidator(_token), WithJsonSchema({"type": "string", "minLength": TOKEN_MIN_LENGTH})
]
"""A bearer token (at least 16 characters); errors never quote it."""


def _path_given(value: Any) -> Any:
    if isinstance(value, str) and not value:
        raise ValueError("must be a path, got ''")
    return value


def _relative_to_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get(_BASE_DIR)
    return value if base is None or value.is_absolute() else Path(base) / value


ConfigPath = Annotated[Path, BeforeValidator(_path_given), AfterValidator(_relative_to_file)]
"""A file or folder; in a YAML file, relative to the file's folder."""


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Annotation of a ``str`` field that must be one of ``names`` (an ``enum`` in the JSON schema).

    ``engine: Annotated[str, OneOf(ENGINES)] = "auto"``
    """

    names: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> core_schema.CoreSchema:
        return core_schema.literal_schema(list(self.names))


# -- the settings classes ----------------------------------------------------------------------------------------


class Config:
    """Base of the settings classes: they load from a mapping or a YAML file."""

    @classmethod
    def from_mapping(cls: type[C], data: Any, source: str | None = None, base_dir: str | Path | None = None) -> C:
        """The settings in ``data`` (e.g. parsed YAML), see :func:`load_mapping`."""
        return load_mapping(cls, data, source=source, base_dir=base_dir)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """The settings in the YAML file ``path``, see :func:`load_yaml`."""
        return load_yaml(cls, path)


@overload
def config_dataclass(cls: type[C], /) -> type[C]: ...


@overload
def config_dataclass(*, json_schema_extra: dict[str, Any] | None = None) -> Callable[[type[C]], type[C]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def config_dataclass(cls: type[C] | None = None, /, *, json_schema_extra: dict[str, Any] | None = None) -> Any:
    """Make ``cls`` a frozen, validated settings dataclass (``@config_dataclass`` or with arguments).

    Construction and ``dataclasses.replace`` raise :class:`ConfigError` (listing every problem) instead of
    pydantic's ``ValidationError``. ``json_schema_extra`` is merged into the class's JSON schema.
    """
    config = CONFIG if json_schema_extra is None else ConfigDict(**CONFIG, json_schema_extra=json_schema_extra)

    def make(cls: type[C]) -> type[C]:
        made = pydantic_dataclass(frozen=True, config=config)(cls)
        init = made.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(type(self).__name__, describe_errors(exc, root=type(self))) from None

        made.__init__ = __init__  # type: ignore[method-assign]
        return made

    return make if cls is None else make(cls)


class ConfigError(ValueError):
    """Settings that do not validate: every problem, each naming its key, in one line.

    Attributes
    ----------
    source : str or None
        The file or class the settings came from (the message's prefix).
    problems : tuple of str
        One entry per problem, ``"key.path: what is wrong"``.
    """

    def __init__(self, source: str | None, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        text = "; ".join(self.problems)
        super().__init__(text if source is None else f"{source}: {text}")


def validate(
    target: Any,
    data: Any,
    *,
    source: str | None = None,
    base_dir: str | Path | None = None,
    loc: tuple[str | int, ...] = (),
) -> Any:
    """``data`` validated as ``target`` (a config class or a :class:`pydantic.TypeAdapter`).

    ``base_dir`` is the folder relative paths are taken from; ``loc`` prefixes every key path in the errors.

    Raises
    ------
    ConfigError
        Listing every problem, prefixed with ``source``.
    """
    validator = getattr(target, "__pydantic_validator__", target)
    context = {_BASE_DIR: base_dir} if base_dir is not None else None
    try:
        return validator.validate_python(data, context=context)
    except ValidationError as exc:
        root = target if isinstance(target, type) else None
        raise ConfigError(source, describe_errors(exc, root=root, loc=loc)) from None


def load_mapping(cls: type[C], data: Any, *, source: str | None = None, base_dir: str | Path | None = None) -> C:
    """The settings of ``cls`` in a mapping (e.g. parsed YAML); relative paths are taken from ``base_dir``.

    Raises
    ------
    ConfigError
        Listing every unknown or missing key, wrong type and broken bound, prefixed with ``source`` (default:
        the class's name).
    """
    source = cls.__name__ if source is None else source
    if not isinstance(data, Mapping):
        raise ConfigError(source, [f"expected a mapping of settings, got {type(data).__name__}"])
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        hint = " (YAML reads an unquoted yes/no/on/off as a boolean)"
        raise ConfigError(source, [f"key {k!r} is not a name{hint if isinstance(k, bool) else ''}" for k in odd])
    return validate(cls, dict(data), source=source, base_dir=base_dir)


def read_yaml(path: str | Path) -> Any:
    """The data in a YAML file (None when it is empty).

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid YAML (with line and column) or repeats a key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(str(path), [f"cannot read the file: {why}"]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_problem(exc)]) from None


def load_yaml(cls: type[C], path: str | Path) -> C:
    """The settings of ``cls`` in the YAML file ``path``; relative paths are relative to the file's folder.

    Raises
    ------
    ConfigError
        One line, prefixed with the path: bad YAML, or every problem of the settings.
    """
    path = Path(path)
    data = read_yaml(path)
    return load_mapping(cls, {} if data is None else data, source=str(path), base_dir=path.parent)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (it would silently win)."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            break
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return f"not valid YAML: {' '.join(str(exc).split())}"


# -- errors ------------------------------------------------------------------------------------------------------

_WORDS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dataclass_type": "must be a mapping of settings",
    "dict_type": "must be a mapping",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "string_too_short": "must have at least {min_length} characters",
}
_MISSING = ("missing", "missing_argument", "missing_keyword_only_argument", "missing_positional_only_argument")
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def key_path(loc: Sequence[str | int]) -> str:
    """``("scenario", 0, "factor")`` as ``"scenario[0].factor"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out


def _bound(value: Any) -> str:
    """A bound as written: 0, not the 0.0 a float field turns it into."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else repr(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_errors(exc: ValidationError, *, root: Any = None, loc: tuple[str | int, ...] = ()) -> list[str]:
    """Each error of ``exc`` in words, naming its key path (``loc`` is prepended); ``root`` is the validated class,
    whose field names suggest a correction for an unknown key."""
    out = []
    short: dict[tuple[str | int, ...], int] = {}  # a fixed-length list given too few items: one problem, not one each
    for err in exc.errors(include_url=False):
        where = key_path(loc + tuple(err["loc"]))
        kind, ctx = err["type"], err.get("ctx", {})
        if kind in _MISSING and err["loc"] and isinstance(err["loc"][-1], int):
            parent = loc + tuple(err["loc"][:-1])
            if parent not in short:
                short[parent] = len(out)
                out.append("")
            given = err["input"]
            n = max(err["loc"][-1] + 1, len(given) if isinstance(given, Sequence) else 0)
            out[short[parent]] = f"{key_path(parent)}: must have {n} items, got {_show(given)}"
        elif kind in _MISSING:
            out.append(f"missing required key '{where}'")
        elif kind in _UNKNOWN:
            out.append(f"unknown key '{where}'{_suggestion(root, tuple(err['loc']))}")
        elif kind == "unexpected_positional_argument":
            out.append(f"too many positional arguments ({_show(err['input'])} is one too many)")
        else:
            if kind == "value_error":
                text = str(ctx["error"])
            elif kind == "string_too_short" and ctx.get("min_length") == 1:
                text = f"must not be empty, got {err['input']!r}"
            elif kind in _WORDS:
                text = _WORDS[kind].format(**{k: _bound(v) if k != "expected" else v for k, v in ctx.items()})
                last = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
                if not last.endswith("token"):  # never echo a secret
                    text += f", got {_show(err['input'])}"
            else:
                text = err["msg"]
            out.append(f"{where}: {text}" if where else text)
    return out


def _suggestion(root: Any, loc: tuple[str | int, ...]) -> str:
    """`` (did you mean 'port'?)`` for an unknown key close to a field name of the class at ``loc[:-1]``."""
    cls = root
    for part in loc[:-1]:
        if cls is None:
            return ""
        cls = _element_class(cls, part)
    if cls is None or not dataclasses.is_dataclass(cls):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), [f.name for f in dataclasses.fields(cls)], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _element_class(cls: Any, part: str | int) -> Any:
    """The dataclass found at key ``part`` of ``cls`` (a field by name, an item of a tuple by index)."""
    if isinstance(part, str):
        if not dataclasses.is_dataclass(cls):
            return None
        try:
            hint = typing.get_type_hints(cls).get(part)
        except (NameError, TypeError):  # an annotation that does not resolve: no suggestion then
            return None
        nested = [t for t in _leaf_types(hint) if dataclasses.is_dataclass(t)]
        return nested[0] if len(nested) == 1 else None
    return cls if dataclasses.is_dataclass(cls) else None


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


# -- JSON schema -------------------------------------------------------------------------------------------------

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
                if dataclasses.is_dataclass(t):
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
