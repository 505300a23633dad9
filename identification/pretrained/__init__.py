"""The surrogates that ship with alutwin, and the one place that says where default models are found.

The folder of this package holds one model directory per kind (``dense``, ``inputskip``, ``sparse-inputskip``,
each ``manifest.json`` + ``weights.safetensors``), trained by ``alutwin study`` (40 trajectories, 10 members;
``docs/study/README.md`` says how to refresh them). They are package data, so an installed alutwin finds them in
any working directory. ``$ALUTWIN_MODELS`` replaces the folder (e.g. with the ``models/`` folder of a study run);
:func:`default_models_dir` is the only code that reads it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["MODELS_ENV", "PACKAGED_KINDS", "default_models_dir"]

MODELS_ENV = "ALUTWIN_MODELS"
"""The environment variable that replaces the packaged folder of default models."""

PACKAGED_KINDS = ("dense", "inputskip", "sparse-inputskip")
"""The model directories in the packaged folder."""


def default_models_dir() -> Path:
    """The folder of the default model directories: ``$ALUTWIN_MODELS`` if set, else the packaged one.

    Returns
    -------
    A folder holding one model directory per kind (``sparse-inputskip/``, ``dense/``, ...).

    Raises
    ------
    NotADirectoryError
        If ``$ALUTWIN_MODELS`` is set but is not a folder, or the package is installed in a form that has no
        folder on disk (a zip file).
    """
    override = os.environ.get(MODELS_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(
                f"${MODELS_ENV}={override!r} is not a folder; expected a folder of model directories "
                f"(such as {', '.join(PACKAGED_KINDS)}), or unset it to use the models that ship with alutwin"
            )
        return path
    packaged = resources.files(__name__)
    if not isinstance(packaged, Path):
        raise NotADirectoryError(
            f"the packaged models of {__name__} are not a folder on disk ({packaged}); "
            f"install alutwin unzipped or set ${MODELS_ENV}"
        )
    return packaged
