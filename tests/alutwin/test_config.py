"""The config base: field types, one-line errors that name every key at once, YAML loading, relative paths,
``dataclasses.replace`` validating again, and JSON schemas with the docstrings' descriptions.

The classes here are small stand-ins defined by the test, so that the base is checked on its own; each package's
settings are checked in its own ``test_config.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, model_validator

from alutwin.config import (
    Address,
    Config,
    ConfigError,
    ConfigPath,
    EnvName,
    Flag,
    Host,
    NonNegativeNumber,
    Number,
    OneOf,
    Port,
    PositiveInt,
    PositiveNumber,
    Text,
    Token,
    config_dataclass,
    load_mapping,
    load_yaml,
    read_yaml,
    validate,
)
from alutwin.config_schema import json_schema


@config_dataclass
class Inner(Config):
    """A nested section.

    Parameters
    ----------
    path : Path, optional
        A file, relative to the YAML file's folder.
    depth : int
        How deep (>= 1).
    """

    path: ConfigPath | None = None
    depth: PositiveInt = 1


@config_dataclass
class Settings(Config):
    """Settings of a test server.

    They show every shared type once.

    Parameters
    ----------
    name : str
        Required, no default.
    port : int
        A TCP port.
    host, address : str
        Where to bind and whom to call.
    rate : float
        Positive.
    grace : float
        Not negative.
    gain : float
        Any finite number.
    enabled : bool
        A flag.
    mode : str
        ``fast`` or ``slow``.
    token : str, optional
        A secret.
    token_env : str, optional
        An environment variable.
    workers, streams : int
        Streams must be fewer than workers.
    weights : tuple of float
        Exactly three.
    inner : Inner
        A section.
    """

    name: Text
    port: Port = 0
    host: Host = "127.0.0.1"
    address: Address = "127.0.0.1:1"
    rate: PositiveNumber = 1.0
    grace: NonNegativeNumber = 0.0
    gain: Number = 0.5
    enabled: Flag = True
    mode: Annotated[str, OneOf(("fast", "slow"))] = "fast"
    token: Token | None = None
    token_env: EnvName | None = None
    workers: PositiveInt = 4
    streams: Annotated[PositiveInt, Field(le=100)] = 2
    weights: tuple[Number, Number, Number] = (1.0, 2.0, 3.0)
    inner: Inner = Inner()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.streams >= self.workers:
            raise ValueError(f"streams ({self.streams}) must be less than workers ({self.workers})")
        return self


def _error(data: dict, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_mapping(Settings, data, **kwargs)
    return err.value


def test_defaults_and_a_frozen_dataclass():
    s = Settings(name="a")
    assert s.port == 0 and s.inner == Inner() and s.weights == (1.0, 2.0, 3.0)
    assert [f.name for f in dataclasses.fields(Settings)][:3] == ["name", "port", "host"]
    assert dataclasses.fields(Settings)[0].default is dataclasses.MISSING  # required stays required
    assert dataclasses.asdict(s)["inner"] == {"path": None, "depth": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 5  # type: ignore[misc]
    assert Settings.from_mapping({"name": "a", "inner": {"depth": 3}}).inner.depth == 3
    assert Settings(name="a", rate=2).rate == 2.0 and isinstance(Settings(name="a", rate=2).rate, float)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("port", 65536, "port: must be <= 65535, got 65536"),
        ("port", -1, "port: must be >= 0, got -1"),
        ("port", True, "port: must be an integer, got True"),
        ("port", 5.0, "port: must be an integer, got 5.0"),
        ("port", "5", "port: must be an integer, got '5'"),
        ("host", "", "host: must not be empty"),
        ("address", 3, "address: must be a string, got 3"),
        ("rate", 0, "rate: must be > 0, got 0"),
        ("rate", float("inf"), "rate: must be a finite number, got inf"),
        ("grace", -0.5, "grace: must be >= 0, got -0.5"),
        ("gain", float("nan"), "gain: must be a finite number, got nan"),
        ("gain", True, "gain: must be a number, got True"),
        ("enabled", "yes", "enabled: must be true or false, got 'yes'"),
        ("enabled", 1, "enabled: must be true or false, got 1"),
        ("mode", "medium", "mode: must be one of 'fast' or 'slow', got 'medium'"),
        ("token_env", "not a name", "token_env: must be an environment variable name, got 'not a name'"),
        ("streams", 101, "streams: must be <= 100, got 101"),
        ("weights", [1, 2], "weights: must have 3 items, got [1, 2]"),
        ("weights", [1, 2, 3, 4], "weights: must have at most 3 items"),
        ("weights", [1, "x", 3], "weights[1]: must be a number, got 'x'"),
        ("weights", "abc", "weights: must be a list, got 'abc'"),
        ("inner", 3, "inner: must be a mapping of settings, got 3"),
        ("inner", {"depth": 0}, "inner.depth: must be >= 1, got 0"),
        ("inner", {"path": ""}, "inner.path: must be a path, got ''"),
        ("workers", 2, "streams (2) must be less than workers (2)"),
    ],
)
def test_each_bad_value_is_named_with_its_key(key, value, words):
    err = _error({"name": "a", key: value})
    assert str(err).startswith(f"Settings: {words}")
    assert len(err.problems) == 1 and "\n" not in str(err)


@config_dataclass
class Either(Config):
    """Fields that take one of two kinds.

    Parameters
    ----------
    factor : float or tuple of 3 float
        One number, or one per axis.
    section : Inner or int
        A section, or just its depth.
    """

    factor: NonNegativeNumber | tuple[NonNegativeNumber, NonNegativeNumber, NonNegativeNumber] = 1.0
    section: Inner | PositiveInt = 1


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("factor", -1, "factor: must be >= 0, got -1"),  # a number: the list branch says nothing
        ("factor", [1, 2], "factor: must have 3 items, got [1, 2]"),  # a list: the number branch says nothing
        ("factor", [1, -2, 3], "factor[1]: must be >= 0, got -2"),
        ("factor", "x", "factor: must be a number or a list, got 'x'"),  # neither: one line of both
        ("section", 0, "section: must be >= 1, got 0"),
        ("section", {"depth": 0}, "section.depth: must be >= 1, got 0"),
        ("section", {"dept": 2}, "unknown key 'section.dept' (did you mean 'depth'?)"),
        ("section", "deep", "section: must be a mapping of settings or an integer, got 'deep'"),
    ],
)
def test_a_union_is_one_line_per_key_without_pydantics_branch_labels(key, value, words):
    with pytest.raises(ConfigError) as err:
        Either.from_mapping({key: value})
    assert err.value.problems == (words,)


def test_a_union_takes_either_kind():
    assert Either(factor=2).factor == 2.0 and Either(factor=[1, 2, 3]).factor == (1.0, 2.0, 3.0)
    assert Either(section=3).section == 3 and Either(section={"depth": 2}).section == Inner(depth=2)


def test_validate_takes_a_type_of_config_classes():
    assert validate(tuple[Inner, ...], [{"depth": 2}]) == (Inner(depth=2),)
    with pytest.raises(ConfigError) as err:
        validate(tuple[Inner, ...], [{"depth": 2}, {"depht": 2, "depth": 0}], loc=("inners",))
    assert err.value.problems == (
        "inners[1].depth: must be >= 1, got 0",
        "unknown key 'inners[1].depht' (did you mean 'depth'?)",
    )


def test_from_cli_takes_the_file_or_the_defaults_and_the_flags_given(tmp_path):
    assert Settings.from_cli(None, {"port": 5, "host": None}, name="a", host="0.0.0.0") == Settings(
        name="a", port=5, host="0.0.0.0"
    )
    path = tmp_path / "s.yaml"
    path.write_text("name: b\nport: 7\nrate: 2\n")
    assert Settings.from_cli(path, {"port": None, "rate": 3}) == Settings(name="b", port=7, rate=3.0)
    assert Settings.from_cli(path, {}, name="ignored with a file") == Settings(name="b", port=7, rate=2.0)
    with pytest.raises(ConfigError, match=r"^Settings: port: must be <= 65535, got 70000$"):
        Settings.from_cli(path, {"port": 70000})
    with pytest.raises(ConfigError, match=r"^Settings: missing required key 'name'$"):
        Settings.from_cli(None, {"port": 1})


def test_every_mistake_is_reported_at_once_in_one_line():
    err = _error({"prot": 1, "port": 70000, "inner": {"depht": 2, "depth": 0}, "enabled": "no"}, source="s.yaml")
    assert err.source == "s.yaml"
    assert err.problems == (
        "missing required key 'name'",
        "port: must be <= 65535, got 70000",
        "enabled: must be true or false, got 'no'",
        "inner.depth: must be >= 1, got 0",
        "unknown key 'inner.depht' (did you mean 'depth'?)",
        "unknown key 'prot' (did you mean 'port'?)",
    )
    assert str(err) == "s.yaml: " + "; ".join(err.problems)
    assert isinstance(err, ValueError)


def test_a_token_is_never_quoted():
    secret = "tooshort-secret"
    err = _error({"name": "a", "token": secret})
    assert err.problems == ("token: must be a string of at least 16 characters",)
    assert "tooshort" not in str(_error({"name": "a", "token": 123456}))
    assert Settings(name="a", token="x" * 16).token == "x" * 16


def test_construction_and_replace_validate_with_the_same_messages():
    with pytest.raises(ConfigError, match=r"^Settings: port: must be <= 65535, got 70000; rate: must be > 0"):
        Settings(name="a", port=70000, rate=-1)
    good = Settings(name="a")
    with pytest.raises(ConfigError, match=r"^Settings: streams \(9\) must be less than workers \(4\)$"):
        dataclasses.replace(good, streams=9)
    assert dataclasses.replace(good, streams=3).streams == 3
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        Settings(name="a", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        Settings()  # type: ignore[call-arg]


def test_mappings_only():
    assert str(_error([1, 2])) == "Settings: expected a mapping of settings, got list"  # type: ignore[arg-type]
    assert "key 1 is not a name" in str(_error({1: "x"}))


def test_yaml_relative_paths_resolve_against_the_files_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "s.yaml"
    path.write_text("name: a\ninner:\n  path: data/x.db\n")
    assert load_yaml(Settings, path).inner.path == tmp_path / "conf" / "data" / "x.db"
    path.write_text("name: a\ninner:\n  path: /abs/x.db\n")
    assert Settings.from_yaml(path).inner.path == Path("/abs/x.db")
    assert Settings(name="a", inner={"path": "rel/x.db"}).inner.path == Path("rel/x.db")  # no file: as given


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: [\n", "not valid YAML at line 2, column 1: expected the node content"),
        ("name: a\nport: 1\nport: 2\n", "not valid YAML at line 3, column 1: key 'port' is given twice"),
        ("name: a\n  port: 1\n", "not valid YAML at line 2, column 7: mapping values are not allowed here"),
        ("- name\n", "expected a mapping of settings, got list"),
        ("", "missing required key 'name'"),
        ("name: a\nport: 0x\nenabled: maybe\n", "port: must be an integer, got '0x'; enabled: must be true or"),
        ("name: a\non: true\n", "key True is not a name (YAML reads an unquoted yes/no/on/off as a boolean)"),
    ],
)
def test_yaml_mistakes_are_one_line_naming_the_file(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Settings.from_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_files_are_one_line_too(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the file: No such file or directory$"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read the file"):
        Settings.from_yaml(tmp_path)  # a folder
    (tmp_path / "latin.yaml").write_bytes(b"name: \xe9\n")
    with pytest.raises(ConfigError, match="cannot read the file"):
        Settings.from_yaml(tmp_path / "latin.yaml")


def test_json_schema_carries_bounds_enums_and_docstring_descriptions():
    schema = json_schema(Settings, title="test settings")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["title"] == "test settings"
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert schema["description"] == "Settings of a test server. They show every shared type once."
    props = schema["properties"]
    assert props["port"]["minimum"] == 0 and props["port"]["maximum"] == 65535
    assert props["rate"]["exclusiveMinimum"] == 0 and props["mode"]["enum"] == ["fast", "slow"]
    assert props["token"]["anyOf"][0] == {"type": "string", "minLength": 16}
    assert props["token_env"]["anyOf"][0]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    assert props["host"]["description"] == "Where to bind and whom to call." == props["address"]["description"]
    assert props["mode"]["description"] == "`fast` or `slow`."
    inner = schema["$defs"]["Inner"]
    assert inner["description"] == "A nested section." and inner["additionalProperties"] is False
    assert inner["properties"]["depth"] == {
        "default": 1,
        "minimum": 1,
        "title": "Depth",
        "type": "integer",
        "description": "How deep (>= 1).",
    }
