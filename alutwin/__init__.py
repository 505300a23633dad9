"""The shared layer of alutwin: what every package uses; it imports nothing of ours but its own generated code.

``alutwin.cli`` (the ``alutwin`` command's dispatch, :class:`~alutwin.cli.CliError`), ``alutwin.rpc`` (gRPC status
mapping, channels, binding, one server lifecycle, signals), ``alutwin.codec`` (numpy <-> protobuf),
``alutwin.config`` (the base of every settings file), ``alutwin.cbuild`` (the C build cache and its floating-point
policy), ``alutwin.fileio`` (crash-safe writes) and ``alutwin.v1`` (the code generated from ``proto/alutwin/v1``).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
"""The version of alutwin (the one source: the package metadata reads it, ``alutwin --version`` prints it)."""
