"""Choosing between the Triton kernels and the PyTorch references.

Default ``"auto"``: Triton for CUDA tensors when Triton imports, the reference
otherwise. ``"triton"`` forces the Triton code (on CPU tensors it needs
``TRITON_INTERPRET=1`` set before import); ``"reference"`` forces PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "reference")
_backend = "auto"
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
