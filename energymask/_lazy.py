"""Names of a package imported on first use (PEP 562), so importing it costs nothing.

``energymask`` and ``energymask.lightning_modules`` use it: the command line's
parser lives below them and must not import torch or Lightning to answer ``--help``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


class _Package(ModuleType):
    """A package whose exported name may equal a sub-module's (``energymask.mask_quality``,
    the function, in ``energymask/mask_quality.py``): importing the sub-module binds the
    export, not the module, as an eager ``from .mask_quality import mask_quality`` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_EXPORTS", {})
        if (isinstance(value, ModuleType) and name in exports
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to its module
    (absolute, or relative to ``package``); a name once imported is kept in ``namespace``,
    which must hold ``exports`` as ``_EXPORTS``."""
    sys.modules[package].__class__ = _Package

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
