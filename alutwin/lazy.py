"""Package attributes imported on first use (PEP 562).

A package's ``__init__`` names what it re-exports without importing the modules that define it, so that importing
one light submodule (a command's parser, for ``alutwin --help``) does not pay for numpy, CasADi or torch. The
package keeps its ``__all__`` and the same names under ``from package import name``; type checkers read them from
an ``if TYPE_CHECKING:`` block of the same imports, and :func:`lazy_exports` checks at import that its table and
``__all__`` name the same things.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Sequence[str], sources: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package that re-exports ``names`` lazily.

    Parameters
    ----------
    package : the package's ``__name__``.
    names : the package's ``__all__``.
    sources : module path -> the names it defines that the package re-exports; together exactly ``names``.

    Returns
    -------
    ``(__getattr__, __dir__)``: ``__getattr__`` imports a name's module on first use and keeps the value in the
    package, so later lookups are plain attribute reads.

    Raises
    ------
    ValueError
        A name is listed under two modules, or ``sources`` and ``names`` do not list the same names.
    """
    where: dict[str, str] = {}
    for module, defined in sources.items():
        for name in defined:
            if name in where:
                raise ValueError(f"{package}: {name!r} is listed under {where[name]} and {module}")
            where[name] = module
    if set(where) != set(names):
        missing, extra = sorted(set(names) - set(where)), sorted(set(where) - set(names))
        raise ValueError(
            f"{package}: __all__ and the lazy sources differ (no source: {missing}; not in __all__: {extra})"
        )

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
