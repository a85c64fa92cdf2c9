"""Choosing between the Triton kernels and the PyTorch references.

Default ``"auto"``: Triton for CUDA tensors when Triton imports, the reference
otherwise. ``"triton"`` forces the Triton code (on CPU tensors it needs
``TRITON_INTERPRET=1`` set before import); ``"reference"`` forces PyTorch.
A Triton kernel that fails on the user's GPU falls back to the reference with
one warning (:func:`guarded`), unless ``ENERGYMASK_STRICT_KERNELS=1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

BACKENDS = ("auto", "triton", "reference")
_backend = "auto"
T = TypeVar("T")
_triton_ok: bool | None = None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (checked once, inside a try)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            _triton_ok = importlib.util.find_spec("triton") is not None
            if _triton_ok:
                import triton  # noqa: F401
        except Exception:  # a broken install counts as absent
            _triton_ok = False
    return _triton_ok


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def get_backend() -> str:
    return _backend


def set_backend(backend: str) -> None:
    """Set the process-wide backend: one of ``"auto"``, ``"triton"``, ``"reference"``."""
    global _backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    _backend = backend


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = get_backend()
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether a call on ``tensor`` should launch the Triton kernel."""
    if _backend == "reference":
        return False
    if _backend == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' was forced but triton cannot be imported")
        if not tensor.is_cuda and not interpreting():
            raise RuntimeError(
                "backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before import"
            )
        return True
    return tensor.is_cuda and triton_available()


STRICT_ENV = "ENERGYMASK_STRICT_KERNELS"
_failed: dict[str, str] = {}  # kernel name -> error of its first failure


def strict() -> bool:
    """True when ``ENERGYMASK_STRICT_KERNELS=1``: a failing Triton kernel raises."""
    return os.environ.get(STRICT_ENV, "0") == "1"


def guarded(name: str, fast: Callable[[], T], fallback: Callable[[], T]) -> T:
    """``fast()`` (a Triton launch), or ``fallback()`` (the reference) if it fails.

    A kernel that fails to compile or launch on this GPU (an old architecture, an
    untried Triton) warns once, naming the kernel and the error, and from then on
    runs the reference. Bad arguments (``ValueError``, ``TypeError``) are the
    caller's error and always raise; so does everything under :func:`strict`.
    """
    if name not in _failed:
        try:
            return fast()
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            if strict():
                raise
            _failed[name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"energymask: Triton kernel {name!r} failed ({_failed[name]}); "
                f"using the PyTorch reference from now on (set {STRICT_ENV}=1 to raise)",
                RuntimeWarning,
                stacklevel=3,
            )
    return fallback()
