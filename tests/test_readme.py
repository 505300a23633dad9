"""The README's "Quick start (Python)" runs as written: its fenced python blocks are executed line for line
(only the twin's address is replaced by that of a twin started here on a free port), and its twin config is
the one a test twin accepts."""

from __future__ import annotations

import codecs
import re
import shlex
from pathlib import Path

import numpy as np

from plant.signals import STATES
from twin.config import TwinConfig

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Quick start (Python)"
ADDRESS = "127.0.0.1:50061"  # the address the README's client connects to
TOKEN = "readme-token-0123456789abcdef"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    assert text.count(HEADING) == 1, f"README.md needs one {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.M | re.S)


def test_quick_start_config_turns_management_on(tmp_path, monkeypatch):
    (shell,) = _blocks("sh")
    (printf,) = [line for line in shell.splitlines() if line.startswith("printf ")]
    words = shlex.split(printf)
    assert words[0] == "printf" and words[2:] == [">", "twin.yaml"], printf
    (tmp_path / "twin.yaml").write_text(codecs.decode(words[1], "unicode_escape"))
    monkeypatch.setenv("ALUTWIN_TWIN_TOKEN", TOKEN)
    config = TwinConfig.from_cli(tmp_path / "twin.yaml", {})
    assert f"{config.host}:{config.port}" == ADDRESS and config.resolve_token() == TOKEN
    assert "alutwin twin serve --config twin.yaml" in shell


def test_quick_start_python_blocks_run_as_written(twin_server, monkeypatch, capsys):
    server, _ = twin_server(token=TOKEN)
    monkeypatch.setenv("ALUTWIN_TWIN_TOKEN", TOKEN)
    monkeypatch.delenv("ALUTWIN_MODELS", raising=False)  # the packaged models, as after pip install
    local, remote = _blocks("python")
    assert remote.count(ADDRESS) == 1
    ns: dict = {}
    exec(compile(local, "README.md: quick start, local", "exec"), ns)
    exec(compile(remote.replace(ADDRESS, server.address), "README.md: quick start, twin", "exec"), ns)

    mean, spread, x0, u = ns["mean"], ns["spread"], ns["x0"], ns["u"]
    assert x0.shape == (1, 8) and u.shape == (1, 360, 5)
    assert mean.shape == spread.shape == (1, 361, 8)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(spread)) and np.all(spread >= 0)
    np.testing.assert_array_equal(mean[0, 0], x0[0])
    assert ns["model"].kind == "sparse-inputskip" and ns["model"].surrogate.n_members == 10
    # The example is a plausible cell: every state of the hour stays inside twice its typical range.
    span = np.array([s.high - s.low for s in STATES])
    low, high = np.array([s.low for s in STATES]), np.array([s.high for s in STATES])
    assert np.all((mean[0] > low - span) & (mean[0] < high + span))

    prediction = ns["prediction"]
    assert prediction.model.name == "cell" and prediction.model.version == ns["version"].version
    assert prediction.mean.shape == prediction.spread.shape == (1, 361, 8)
    superheat = prediction.outputs["superheat"]
    assert superheat.shape == (1, 361) and np.all(np.isfinite(superheat)) and 0 < superheat[0, 0] < 30
    # The twin's C kernel and the numpy reference above are two implementations: they agree to a relative 1e-10
    # over the hour (about 1e-15 here; SIMD exp/tanh differ in the last bit between CPUs and 360 steps of a
    # feedback model amplify that), not bit for bit.
    np.testing.assert_allclose(prediction.mean, mean, rtol=1e-10, atol=0)
    out = capsys.readouterr().out
    assert "after 1 h:" in out and "superheat after 1 h:" in out
