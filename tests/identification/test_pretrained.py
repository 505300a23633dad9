"""The default models ship as package data, and $ALUTWIN_MODELS is the one way to replace them."""

from __future__ import annotations

import pytest

from identification.modelfile import load_model
from identification.pretrained import MODELS_ENV, PACKAGED_KINDS, default_models_dir


def test_the_packaged_folder_holds_a_loadable_model_of_each_kind(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    folder = default_models_dir()
    assert folder.is_dir() and folder.name == "pretrained" and folder.parent.name == "identification"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(PACKAGED_KINDS)
    for kind in PACKAGED_KINDS:
        loaded = load_model(folder / kind)  # validates the manifest, the checksum and the weights
        assert loaded.kind == kind and loaded.provenance["n_traj"] == 40


def test_alutwin_models_replaces_the_packaged_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert default_models_dir() == tmp_path


@pytest.mark.parametrize("where", ["missing", "file"])
def test_an_alutwin_models_that_is_no_folder_is_refused_by_name(tmp_path, monkeypatch, where):
    path = tmp_path / where
    if where == "file":
        path.write_text("not a folder")
    monkeypatch.setenv(MODELS_ENV, str(path))
    with pytest.raises(NotADirectoryError, match=rf"^\$ALUTWIN_MODELS='{path}' is not a folder; expected") as err:
        default_models_dir()
    assert "\n" not in str(err.value)
