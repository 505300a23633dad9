"""Sparse neural surrogates of the cell: data pipeline, models, training, metrics, export to CasADi.

Uses ``plant`` (data and equations); never imports ``twin`` or ``controller``.
"""
