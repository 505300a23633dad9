"""CasADi MPC on the served surrogate, the closed loop against the plant, and its reports.

Uses ``plant`` (equations, plant client), ``identification`` (CasADi export) and ``twin`` (client).
"""
