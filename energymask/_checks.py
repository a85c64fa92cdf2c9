"""Argument checks shared by the layers: numbers, ints, bools, feature maps, settings.

Each check raises the house errors, ``TypeError`` for the wrong kind and
``ValueError`` for a value out of range, naming the argument, what is allowed
and what was given. A bool is never a number here (``True`` is not a rate).
The words of a message (``expected``, ``allowed``) are the caller's, so each
layer keeps its own phrasing; this module holds the logic once. The kernels do
not import it (they never import from the layers; docs/design.md).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

S = TypeVar("S")


def is_int(value: object) -> bool:
    """An integral number that is not a bool (Python or NumPy ints)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _got(value: object, type_name: bool) -> str:
    return f"{value!r} ({type(value).__name__})" if type_name else f"{value!r}"


def check_real(name: str, value: object, expected: str, *, finite: str = "finite",
               type_name: bool = True) -> None:
    """A finite real number, bool refused.

    ``TypeError``: "{name} must be {expected}, but got {value!r}", with the
    value's type in brackets when ``type_name``; ``ValueError`` for NaN / Inf:
    "{name} must be {finite}, but got {value}".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, but got {_got(value, type_name)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {finite}, but got {value}")


def check_int(name: str, value: object, expected: str, *, type_name: bool = True) -> None:
    """An int, bool refused. ``TypeError``: "{name} must be {expected}, but got {value!r}"."""
    if not is_int(value):
        raise TypeError(f"{name} must be {expected}, but got {_got(value, type_name)}")


def check_range(name: str, value: object, allowed: str, ok: Callable[[object], bool], *,
                repr_value: bool = False) -> None:
    """``ValueError`` "{name} must be {allowed}, but got {value}" unless ``ok(value)``.

    Call it after :func:`check_real` or :func:`check_int`; ``repr_value`` shows
    the value as ``repr`` gives it.
    """
    if not ok(value):
        shown = repr(value) if repr_value else value
        raise ValueError(f"{name} must be {allowed}, but got {shown}")


def check_bool(name: str, value: object) -> None:
    """``TypeError`` "{name} must be a bool, but got {value!r}" unless a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, but got {value!r}")


def check_input(x: object) -> None:
    """A floating-point feature map (B, C, H, W), as the dropout layers take it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor (B, C, H, W), but got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4D (B, C, H, W), but got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, but got {x.dtype}")


def replaced(cls: type[S], settings: S | None, fields: dict[str, Any], *, a_class: str,
             label: str, first: str) -> S:
    """``settings`` (None: ``cls()``, the defaults) with ``fields`` replaced, checked again.

    ``cls`` is a frozen settings dataclass. ``TypeError`` for ``settings`` of
    another type ("settings must be {a_class} or None, ...; pass {first}=...")
    or an unknown field name ("unknown {label} setting(s) ...").
    """
    if settings is not None and not isinstance(settings, cls):
        raise TypeError(f"settings must be {a_class} or None, but got "
                        f"{type(settings).__name__}; pass {first}=... and the others by name")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown {label} setting(s) {unknown}; the settings are {sorted(known)}")
    return dataclasses.replace(settings or cls(), **fields)
