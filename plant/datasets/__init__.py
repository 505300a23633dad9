"""Identification data sets on disk: generation, a validated safetensors format, and ``alutwin simulate``.

Modules: ``fileformat`` (the file: save, load, validation, checksum), ``generation`` (simulating a set from a
seed) and ``cli`` (what ``alutwin simulate`` runs; its parser is in :mod:`plant.commands`). ``docs/datasets.md``
describes the format.
"""

from plant.datasets.cli import require_engine
from plant.datasets.fileformat import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    Dataset,
    DatasetError,
    DatasetMeta,
    load_dataset,
    save_dataset,
    tensor_checksum,
)
from plant.datasets.generation import DEFAULT_ENGINE, PUBLISHED_SIZES, SPLITS, generate

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "SPLITS",
    "PUBLISHED_SIZES",
    "DEFAULT_ENGINE",
    "DatasetError",
    "DatasetMeta",
    "Dataset",
    "generate",
    "save_dataset",
    "load_dataset",
    "tensor_checksum",
    "require_engine",
]
