"""The fleet work: every cell of a potline at once, on Ray (the ``fleet`` extra: ``pip install 'alutwin[fleet]'``).

:mod:`apps.fleet.fit` fits each cell's ensemble as a Ray task (or one cell after another) and registers each
result in the twin as its own model (``cell-017``); it is ``alutwin fleet fit``.

:mod:`apps.fleet.control` runs one NMPC per cell on Ray actors, on the twin's model of that cell; it is
``alutwin control --ray``.
"""

__all__ = ["cell_name"]


def cell_name(cell: int) -> str:
    """The twin's model name of a potline cell: ``cell-017`` (three digits at least), the name ``alutwin fleet
    fit`` registers and ``alutwin control --ray`` controls with."""
    return f"cell-{cell:03d}"
