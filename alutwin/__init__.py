"""The shared layer of alutwin: what every package uses and nothing of ours is imported by.

``alutwin.cli`` (the ``alutwin`` command's dispatch and :class:`~alutwin.cli.CliError`), ``alutwin.rpc`` (gRPC
status mapping, channels, server binding and one server lifecycle), ``alutwin.fileio`` (crash-safe writes),
``alutwin.cbuild`` (the C build cache), and ``alutwin.v1`` (the code generated from ``proto/alutwin/v1``).
"""

__version__ = "0.1.0"
