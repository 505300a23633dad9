"""Model-based control of the cell: a CasADi NMPC on the true equations (oracle) or on a surrogate the twin
serves (rebuilt when the twin's champion changes), its safety layer (fallback to the cell's own controllers,
clipping, watchdog), the closed loop against the plant, and its report (``control.md``).

Dependencies point down only: ``plant`` (equations, service client), ``identification`` (CasADi export, model
files) and the twin's client, which callers hand in (``controller`` starts no server: ``apps`` does).
"""
