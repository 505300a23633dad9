"""The config base of every settings file: frozen pydantic dataclasses, YAML loading, one-line errors.

A settings class derives from :class:`Config` and is made with :func:`config_dataclass`: a frozen dataclass
(``dataclasses.replace``, ``asdict`` and ``fields`` work on it, and ``replace`` validates again) whose fields use
the annotated types below, so that every file checks a port, a host or a positive number the same way. Required
fields have no default; YAML only fills them. Every mistake is reported at once, in one :class:`ConfigError` (a
``ValueError``) that names each key::

    twin.yaml: max_workers: must be >= 1, got 0; historian.max_ingest_streams: must be an integer, got 'x'; unknown key 'prot' (did you mean 'port'?)

Paths (:data:`ConfigPath`) in a YAML file are relative to the file's folder. The JSON schema of a settings class,
with the field descriptions of its numpydoc docstring, is :func:`alutwin.config_schema.json_schema`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, overload

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
    "Address",
    "Config",
    "ConfigError",
    "ConfigPath",
    "EnvName",
    "Flag",
    "Host",
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
    "load_mapping",
    "load_yaml",
    "read_yaml",
    "validate",
]

C = TypeVar("C")

_CONFIG = ConfigDict(extra="forbid")  # unknown keys are refused (strictness is per type, below)

_BASE_DIR = "base_dir"  # key of the validation context: the folder relative paths are taken from

TOKEN_MIN_LENGTH = 16
"""Shortest bearer token a config accepts."""

# -- field types -------------------------------------------------------------------------------------------------
# Strict: a YAML 'yes', "5" or 5.0 is not silently taken for a bool or an int; an int is a valid number.

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

    @classmethod
    def from_cli(cls: type[C], path: str | Path | None, flags: Mapping[str, Any], **defaults: Any) -> C:
        """The settings of a command: the YAML file ``path`` (without one, ``defaults``), with the flags that were
        given (those not None) in place of the file's or the defaults' values.

        Raises
        ------
        ConfigError
            The file, a default or a flag holds a bad setting (every problem named).
        """
        given = {name: value for name, value in flags.items() if value is not None}
        if path is None:
            return cls(**{**defaults, **given})
        config: Any = load_yaml(cls, path)  # a dataclass: config_dataclass made cls
        return dataclasses.replace(config, **given) if given else config


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
    config = _CONFIG if json_schema_extra is None else ConfigDict(**_CONFIG, json_schema_extra=json_schema_extra)

    def make(cls: type[C]) -> type[C]:
        made = cast("type[C]", pydantic_dataclass(frozen=True, config=config)(cls))  # the same class, typed loosely
        init = made.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(type(self).__name__, _describe_errors(exc, root=type(self))) from None

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
    """``data`` validated as ``target`` (a config class, or a type of them such as ``tuple[Event, ...]``).

    ``base_dir`` is the folder relative paths are taken from; ``loc`` prefixes every key path in the errors.

    Raises
    ------
    ConfigError
        Listing every problem, prefixed with ``source``.
    """
    validator = getattr(target, "__pydantic_validator__", None) or _adapter(target)
    context = {_BASE_DIR: base_dir} if base_dir is not None else None
    try:
        return validator.validate_python(data, context=context)
    except ValidationError as exc:
        raise ConfigError(source, _describe_errors(exc, root=target, loc=loc)) from None


@functools.cache
def _adapter(target: Any) -> TypeAdapter[Any]:
    return TypeAdapter(target)


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


def _key_path(loc: Sequence[str | int]) -> str:
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


@dataclasses.dataclass
class _Problem:
    """One problem of a ConfigError: ``where: text, got`` (``where`` None: the text is the whole line); the texts
    of several branches of a union at one key are alternatives."""

    where: str | None
    texts: list[str]
    got: str = ""

    def line(self) -> str:
        text = self.texts[0]
        for prefix in ("must be ", "must "):  # "must be >= 0" or "must be a list": "must be >= 0 or a list"
            if len(self.texts) > 1 and all(t.startswith(prefix) for t in self.texts):
                text = prefix + " or ".join(t[len(prefix) :] for t in self.texts)
                break
        else:
            text = " or ".join(self.texts)
        return f"{self.where}: {text}{self.got}" if self.where else text + self.got


def _describe_errors(exc: ValidationError, *, root: Any = None, loc: tuple[str | int, ...] = ()) -> list[str]:
    """Each problem of ``exc`` in words, naming its key path (``loc`` is prepended).

    ``root`` is the validated type: through it, the labels pydantic gives the branches of a union are left out of
    the key paths, the errors of one key from several branches make one line (``must be a number or a list``),
    and an unknown key gets a suggestion from the field names.
    """
    errors = _relevant_errors(exc, root)
    short: dict[tuple[str | int, ...], int] = {}  # a fixed-length list given too few items: one problem, not one each
    for err, _, _ in errors:
        if err["type"] in _MISSING and err["loc"] and isinstance(err["loc"][-1], int):
            parent, given = tuple(err["loc"][:-1]), err["input"]
            n = max(err["loc"][-1] + 1, len(given) if isinstance(given, Sequence) else 0)
            short[parent] = max(n, short.get(parent, 0))
    problems: dict[Any, _Problem] = {}
    for i, (err, path, unions) in enumerate(errors):
        where: str | None = _key_path(loc + path)
        kind, ctx = err["type"], err.get("ctx", {})
        got = ""
        if kind in _MISSING and path and isinstance(path[-1], int):
            items = short.pop(tuple(err["loc"][:-1]), None)
            if items is None:
                continue
            where, path = _key_path(loc + path[:-1]), path[:-1]
            text, got = f"must have {items} items", f", got {_show(err['input'])}"
        elif kind in _MISSING:
            where, text = None, f"missing required key '{where}'"
        elif kind in _UNKNOWN:
            where, text = None, f"unknown key '{where}'{_suggestion(root, tuple(err['loc']))}"
        elif kind == "unexpected_positional_argument":
            where, text = None, f"too many positional arguments ({_show(err['input'])} is one too many)"
        elif kind == "value_error":
            text = str(ctx["error"])
        elif kind == "string_too_short" and ctx.get("min_length") == 1:
            text = f"must not be empty, got {err['input']!r}"
        elif kind in _WORDS:
            text = _WORDS[kind].format(**{k: _bound(v) if k != "expected" else v for k, v in ctx.items()})
            last = next((p for p in reversed(path) if isinstance(p, str)), "")
            if not last.endswith("token"):  # never echo a secret
                got = f", got {_show(err['input'])}"
        else:
            text = err["msg"]
        key = (path, unions, where is None) if unions else i
        problem = problems.setdefault(key, _Problem(where, [], got))
        if text not in problem.texts:
            problem.texts.append(text)
    return [p.line() for p in problems.values()]


_MISMATCH = ("literal_error", "is_instance_of")
"""Beside the ``*_type`` errors: the input is not of the kind a branch of a union takes."""


def _relevant_errors(exc: ValidationError, root: Any) -> list[tuple[Any, tuple[str | int, ...], tuple[Any, ...]]]:
    """``(error, key path, unions)`` for the errors of ``exc``: the key path without pydantic's labels of union
    branches, the unions it went through (each as its location up to the label). A branch the input is not even
    of the kind of is left out when another branch of its union is (a list given: "must be a number" says nothing).
    """
    labelled = []
    unmatched: dict[tuple[str | int, ...], dict[Any, bool]] = {}  # per union: per branch, the input is not its kind
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        labels, _ = _follow(root, loc)
        labelled.append((err, loc, labels))
        for i in labels:
            mismatch = len(loc) == i + 1 and (err["type"].endswith("_type") or err["type"] in _MISMATCH)
            branches = unmatched.setdefault(loc[:i], {})
            branches[loc[i]] = branches.get(loc[i], True) and mismatch
    out = []
    for err, loc, labels in labelled:
        per_union = [unmatched[loc[:i]] for i in labels]
        if any(b[loc[i]] and not all(b.values()) for i, b in zip(labels, per_union, strict=True)):
            continue
        path = tuple(p for i, p in enumerate(loc) if i not in labels)
        out.append((err, path, tuple(loc[:i] for i in labels)))
    return out


def _follow(root: Any, loc: Sequence[str | int]) -> tuple[list[int], list[Any]]:
    """Follow ``loc`` (an error's location) through the type hints of ``root``: the positions in ``loc`` that are
    pydantic's labels of union branches (e.g. ``constrained-float``), and the types found at its end."""
    labels: list[int] = []
    hints = [_concrete(root)]
    for i, part in enumerate(loc):
        unions = [h for h in hints if _is_union(h)]
        if unions:  # pydantic names the branch it tried
            labels.append(i)
            hints = [_concrete(a) for u in unions for a in typing.get_args(u)]
        else:
            hints = [_concrete(c) for h in hints for c in _children(h, part)]
    return labels, hints


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _concrete(hint: Any) -> Any:
    """``hint`` through Annotated and an optional None (pydantic checks None before the union's branches)."""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        elif _is_union(hint) and type(None) in typing.get_args(hint):
            rest = tuple(a for a in typing.get_args(hint) if a is not type(None))
            hint = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - a union made of a tuple
        else:
            return hint


def _children(hint: Any, part: str | int) -> list[Any]:
    """The type at key ``part`` of ``hint``: a field of a dataclass (by name, or by position for an argument), an
    item of a tuple or list, a value of a mapping."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _field_hints(hint)
        if isinstance(part, int):
            names = [f.name for f in dataclasses.fields(hint) if f.init]
            return [hints[names[part]]] if 0 <= part < len(names) and names[part] in hints else []
        return [hints[part]] if part in hints else []
    if origin is tuple and isinstance(part, int):
        if len(args) == 2 and args[1] is Ellipsis:
            return [args[0]]
        return [args[part]] if 0 <= part < len(args) else []
    if origin in (list, Sequence) and isinstance(part, int) and args:
        return [args[0]]
    if origin in (dict, Mapping) and len(args) == 2:
        return [args[1]]
    return []


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: no walk through it then
        return {}


def _suggestion(root: Any, loc: tuple[str | int, ...]) -> str:
    """`` (did you mean 'port'?)`` for an unknown key close to a field name of the class at ``loc[:-1]``."""
    _, hints = _follow(root, loc[:-1])
    names = [
        f.name for h in hints if isinstance(h, type) and dataclasses.is_dataclass(h) for f in dataclasses.fields(h)
    ]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
