"""Model files: a trained surrogate as ``weights.safetensors`` + ``manifest.json``, in one directory or as bytes.

Layout of a model directory::

    model_dir/
        weights.safetensors   float64 tensors layer{i}.weight (M, n_in, n_out), layer{i}.bias (M, n_out) and,
                              for exactly sparse models, uint8 layer{i}.mask (M, n_in, n_out) (0/1)
        manifest.json         format name and version, kind, prior, architecture, normalisation, member count,
                              non-zero weight counts, provenance of the training data, metrics, library versions,
                              creation time, and the SHA-256 and size of the weights file

Files are written atomically (temporary files in the same directory, ``fsync``, ``os.replace``), weights first
and manifest last; the manifest's checksum binds the pair, so a crash between the two replacements leaves a
directory that :func:`load_model` refuses instead of a silently mixed model.

The same two files travel as bytes (the twin's RegisterModel and ExportModel): :func:`model_to_bytes` makes
them and :func:`load_model_bytes` validates and loads them; :func:`save_model` and :func:`load_model` are these
two plus the directory (:func:`read_model_files` reads a directory's two files as bytes, the manifest checked
first; :func:`read_manifest` only the checked manifest). Model files are untrusted input:
:mod:`identification.modelfile.format` says what a valid file is and refuses everything else with a
:class:`ModelFileError` naming the file and the problem.
"""

from identification.modelfile.files import (
    dataset_checksum,
    load_model,
    load_model_bytes,
    model_to_bytes,
    read_manifest,
    read_model_files,
    save_model,
    training_provenance,
)
from identification.modelfile.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_HIDDEN_LAYERS,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    MAX_UNITS,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    LoadedModel,
    ModelFileError,
    tensor_names,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "MANIFEST_NAME",
    "MAX_HIDDEN_LAYERS",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
    "MAX_UNITS",
    "MAX_WEIGHTS_BYTES",
    "ModelFileError",
    "WEIGHTS_NAME",
    "dataset_checksum",
    "load_model",
    "load_model_bytes",
    "model_to_bytes",
    "read_manifest",
    "read_model_files",
    "save_model",
    "training_provenance",
    "tensor_names",
]
