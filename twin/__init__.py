"""The gRPC digital twin: ``serving/`` (Predict, the registry RPCs, token, drain, metrics), ``registry/`` (versions,
aliases, hot swap, explanations), ``historian/`` (ingest, historian, bridge), ``online/`` (the re-fit worker),
and the client (``client``, ``results``) that the controller and other callers use.

Uses ``identification``, ``plant`` and ``alutwin``; never imports ``controller`` or ``apps``.
"""
