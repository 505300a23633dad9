"""The twin's settings (twin.config.TwinConfig, HistorianConfig) and the bridge's (twin.historian.BridgeConfig):
defaults, every bound and cross-field rule refused with its key named, several mistakes at once, relative paths
against the YAML file's folder, ``dataclasses.replace`` validating again, the example files, and the flags of
``alutwin twin ingest`` over its --config file."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from alutwin.cli import CliError
from alutwin.config import ConfigError
from identification.rollout import ENGINES
from twin.cli import _cmd_ingest, config_from_args
from twin.commands import register_ingest
from twin.config import HISTORIAN_FILE, HistorianConfig, TwinConfig
from twin.historian import Backoff, BridgeConfig

REPO = Path(__file__).resolve().parents[2]
BASE = {"store": "s", "port": 0}


def test_twin_defaults():
    cfg = TwinConfig(**BASE)
    assert cfg.store == Path("s") and cfg.loopback and not cfg.tls and cfg.resolve_token() is None
    assert cfg.historian == HistorianConfig() and cfg.historian_path == Path("s") / HISTORIAN_FILE
    assert cfg.engine in ENGINES and cfg.max_watchers + cfg.historian.max_ingest_streams < cfg.max_workers
    assert [f.name for f in dataclasses.fields(TwinConfig) if f.default is dataclasses.MISSING] == ["store", "port"]
    assert TwinConfig(**BASE, historian={"enabled": False}).historian_path is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"port": 65536}, "port: must be <= 65535, got 65536"),
        ({"metrics_port": -1}, "metrics_port: must be >= 0, got -1"),
        ({"store": ""}, "store: must be a path, got ''"),
        ({"store": 5}, "store: must be a path"),
        ({"host": ""}, "host: must not be empty"),
        ({"metrics_host": 1}, "metrics_host: must be a string, got 1"),
        ({"max_workers": 0}, "max_workers: must be >= 1, got 0"),
        ({"rollout_threads": 0}, "rollout_threads: must be >= 1, got 0"),
        ({"max_concurrent_predictions": 0}, "max_concurrent_predictions: must be >= 1, got 0"),
        ({"max_batch": 0}, "max_batch: must be >= 1, got 0"),
        ({"max_horizon": 1.5}, "max_horizon: must be an integer, got 1.5"),
        ({"max_work": 0}, "max_work: must be >= 1, got 0"),
        ({"max_message_bytes": 1000}, "max_message_bytes: must be >= 1048576, got 1000"),
        ({"max_message_bytes": 1 << 31}, "max_message_bytes: must be <= 2147483647"),
        ({"max_upload_bytes": 0}, "max_upload_bytes: must be >= 1, got 0"),
        ({"max_upload_bytes": (64 << 20) + 1}, "max_upload_bytes: must be <= 67108864"),
        ({"max_upload_bytes": 63 << 20}, "max_message_bytes (67108864) must exceed max_upload_bytes (66060288) by"),
        ({"keep_previous": -1}, "keep_previous: must be >= 0, got -1"),
        ({"cache_size": -1}, "cache_size: must be >= 0, got -1"),
        ({"engine": "gpu"}, "engine: must be one of 'auto', 'compiled' or 'numpy', got 'gpu'"),
        ({"smoke_horizon": 100_001}, "smoke_horizon: must be <= 100000"),
        ({"max_watchers": -1}, "max_watchers: must be >= 0, got -1"),
        ({"max_watchers": 16}, "max_watchers (16) must be less than max_workers (16)"),
        ({"max_watchers": 12}, "max_watchers (12) plus historian.max_ingest_streams (4) must be less than max_workers"),
        ({"watch_queue_size": 0}, "watch_queue_size: must be >= 1, got 0"),
        ({"token": "short"}, "token: must be a string of at least 16 characters"),
        ({"token_env": "not a name"}, "token_env: must be an environment variable name, got 'not a name'"),
        ({"token": "x" * 16, "token_env": "T"}, "give token or token_env, not both"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"tls_key": "k.pem"}, "tls_cert and tls_key go together"),
        ({"grace_s": -1}, "grace_s: must be >= 0, got -1"),
        ({"grace_s": float("inf")}, "grace_s: must be a finite number"),
        ({"heap_keep_mib": -1}, "heap_keep_mib: must be >= 0, got -1"),
        ({"heap_keep_mib": 2048}, "heap_keep_mib: must be <= 2047, got 2048"),
        ({"historian": 3}, "historian: must be a mapping of settings, got 3"),
        ({"historian": {"enabled": "yes"}}, "historian.enabled: must be true or false, got 'yes'"),
        ({"historian": {"path": ""}}, "historian.path: must be a path, got ''"),
        ({"historian": {"max_batch_samples": 1_000_001}}, "historian.max_batch_samples: must be <= 1000000"),
        ({"historian": {"max_ingest_streams": 0}}, "historian.max_ingest_streams: must be >= 1, got 0"),
        ({"historian": {"max_quarantine_list": 0}}, "historian.max_quarantine_list: must be >= 1, got 0"),
        ({"historian": {"pth": "x"}}, "unknown key 'historian.pth' (did you mean 'path'?)"),
        ({"prot": 1}, "unknown key 'prot' (did you mean 'port'?)"),
    ],
)
def test_each_twin_rule_is_refused_naming_the_key(settings, words):
    with pytest.raises(ConfigError) as err:
        TwinConfig.from_mapping({**BASE, **settings})
    assert str(err.value).startswith(f"TwinConfig: {words}"), str(err.value)


def test_the_rules_accept_their_edges():
    cfg = TwinConfig(**BASE, max_watchers=11, historian={"max_ingest_streams": 4}, max_upload_bytes=62 << 20)
    assert cfg.max_watchers == 11 and cfg.max_message_bytes - cfg.max_upload_bytes == 2 << 20
    assert TwinConfig(**BASE, max_watchers=15, historian={"enabled": False}).max_watchers == 15  # no ingest streams
    assert TwinConfig(store="s", port=65535, token="x" * 16, tls_cert="c", tls_key="k").tls


def test_several_mistakes_in_one_yaml_are_reported_at_once(tmp_path):
    path = tmp_path / "twin.yaml"
    path.write_text("store: s\nprot: 1\nport: 0\nmax_workers: 0\nhistorian:\n  max_ingest_streams: x\n")
    with pytest.raises(ConfigError) as err:
        TwinConfig.from_yaml(path)
    assert str(err.value) == (
        f"{path}: max_workers: must be >= 1, got 0; historian.max_ingest_streams: must be an integer, got 'x'; "
        "unknown key 'prot' (did you mean 'port'?)"
    )


def test_relative_paths_resolve_against_the_yaml_files_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "twin.yaml"
    path.write_text("store: models\nport: 0\ntls_cert: c.pem\ntls_key: /abs/k.pem\nhistorian:\n  path: ../h.sqlite\n")
    cfg = TwinConfig.from_yaml(path)
    assert cfg.store == tmp_path / "conf" / "models" and cfg.tls_cert == tmp_path / "conf" / "c.pem"
    assert cfg.tls_key == Path("/abs/k.pem") and cfg.historian_path == tmp_path / "conf" / ".." / "h.sqlite"


def test_replace_validates_again():
    cfg = TwinConfig(**BASE)
    with pytest.raises(ConfigError, match=r"^TwinConfig: max_watchers \(16\) must be less than max_workers \(16\)"):
        dataclasses.replace(cfg, max_watchers=16)
    with pytest.raises(ConfigError, match=r"^TwinConfig: port: must be >= 0, got -1$"):
        dataclasses.replace(cfg, port=-1)
    assert dataclasses.replace(cfg, historian={"enabled": False}).historian == HistorianConfig(enabled=False)
    with pytest.raises(ConfigError, match=r"^HistorianConfig: max_batch_samples: must be >= 1, got 0$"):
        dataclasses.replace(cfg.historian, max_batch_samples=0)


def test_token_resolution_never_quotes_the_token(monkeypatch):
    with pytest.raises(ConfigError) as err:
        TwinConfig(**BASE, token="my-short-secret")
    assert "my-short-secret" not in str(err.value)
    cfg = TwinConfig(**BASE, token_env="TWIN_T")
    monkeypatch.setenv("TWIN_T", "0123456789abcdefXYZ")
    assert cfg.resolve_token() == "0123456789abcdefXYZ"
    monkeypatch.setenv("TWIN_T", "short")
    with pytest.raises(ValueError, match=r"\$TWIN_T must be at least 16 characters"):
        cfg.resolve_token()


def test_example_twin_config_loads():
    cfg = TwinConfig.from_yaml(REPO / "deploy" / "twin.yaml")
    assert cfg.loopback and not cfg.tls and cfg.store == REPO / "deploy" / ".." / "data" / "twin-store"
    assert cfg.token is None and cfg.token_env == "ALUTWIN_TWIN_TOKEN" and cfg.historian.enabled


# ---------------------------------------------------------------------------------------------------------------
# The bridge's settings


def test_bridge_defaults_and_example():
    cfg = BridgeConfig(plant="p:1", twin="t:2")
    assert cfg.cells == () and cfg.every == 1 and cfg.backoff == Backoff() and cfg.token_env == "ALUTWIN_TWIN_TOKEN"
    example = BridgeConfig.from_yaml(REPO / "deploy" / "bridge.yaml")
    assert example == BridgeConfig(plant="127.0.0.1:50051", twin="127.0.0.1:50061")
    assert [d for d, _ in zip(Backoff(0.1, 0.5, 2.0).delays(), range(5), strict=False)] == [0.1, 0.2, 0.4, 0.5, 0.5]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"plant": ""}, "plant: must not be empty, got ''"),
        ({"cells": [0, -1]}, "cells[1]: must be >= 0, got -1"),
        ({"every": 0}, "every: must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
        ({"flush_s": 0}, "flush_s: must be > 0, got 0"),
        ({"max_buffer": 0}, "max_buffer: must be >= 1, got 0"),
        ({"ack_timeout_s": float("nan")}, "ack_timeout_s: must be a finite number, got nan"),
        ({"token_env": "1X"}, "token_env: must be an environment variable name, got '1X'"),
        ({"tls_ca": ""}, "tls_ca: must be a path, got ''"),
        ({"backoff": {"initial_s": 0}}, "backoff.initial_s: must be > 0, got 0"),
        ({"backoff": {"factor": 0.5}}, "backoff.factor: must be >= 1, got 0.5"),
        ({"backoff": {"initial_s": 2, "max_s": 1}}, "backoff: max_s (1) must be at least initial_s (2)"),
    ],
)
def test_each_bridge_rule_is_refused_naming_the_key(settings, words):
    with pytest.raises(ConfigError) as err:
        BridgeConfig.from_mapping({"plant": "p:1", "twin": "t:2", **settings})
    assert str(err.value) == f"BridgeConfig: {words}"


def test_bridge_yaml_resolves_tls_ca_against_its_folder(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text("plant: p:1\ntwin: t:2\ntls_ca: certs/ca.pem\nbackoff: {max_s: 1.0}\n")
    cfg = BridgeConfig.from_yaml(path)
    assert cfg.tls_ca == tmp_path / "certs" / "ca.pem" and cfg.backoff == Backoff(max_s=1.0)


def _ingest_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alutwin twin")
    register_ingest(parser.add_subparsers(dest="twin_command", required=True))
    return parser.parse_args(["ingest", *argv])


def test_ingest_flags_override_the_config_file(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text("plant: p:1\ntwin: t:2\nevery: 5\nbatch_size: 50\ncells: [0, 1]\n")
    cfg = config_from_args(_ingest_args("--config", str(path), "--every", "2", "--twin", "other:3", "--cells", "4"))
    assert (cfg.plant, cfg.twin, cfg.every, cfg.batch_size, cfg.cells) == ("p:1", "other:3", 2, 50, (4,))
    assert config_from_args(_ingest_args("--config", str(path), "--token-env", "")).token_env is None
    flags = config_from_args(_ingest_args("--plant", "a:1", "--twin", "b:2", "--flush-s", "0.1"))
    assert flags == BridgeConfig(plant="a:1", twin="b:2", flush_s=0.1)
    with pytest.raises(CliError, match="give --twin, or a --config file that names them"):
        config_from_args(_ingest_args("--plant", "a:1"))
    with pytest.raises(ConfigError, match=r"^BridgeConfig: every: must be >= 1, got 0$"):
        config_from_args(_ingest_args("--plant", "a:1", "--twin", "b:2", "--every", "0"))


def test_ingest_command_refuses_a_bad_config_before_it_connects(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text("plant: p:1\ntwn: t:2\nevery: 0\n")
    args = _ingest_args("--config", str(path))
    assert args.func == "twin.cli:_cmd_ingest"
    with pytest.raises(ConfigError) as err:  # a ValueError: the alutwin command prints it as one line, exit 2
        _cmd_ingest(args)
    assert str(err.value) == (
        f"{path}: missing required key 'twin'; every: must be >= 1, got 0; unknown key 'twn' (did you mean 'twin'?)"
    )
