"""The gRPC digital twin: model registry, multi-step rollouts, ingest and online re-fit.

Uses ``identification`` and ``plant``; never imports ``controller``.
"""
