"""Choosing between the Triton kernels, ``torch.compile`` and the PyTorch references.

Default ``"auto"``. For the Potts kernels: Triton for CUDA tensors when Triton
imports, the reference otherwise. For ERSM (:func:`ersm_backend`): on CPU the
reference; on CUDA the fastest backend of the measured table shipped in
``dispatch_table.json`` (``benchmarks/measure_kernels.sh`` re-measures it) for
the nearest measured shape of the same layout and dtype, among the backends
whose measurement is current (a Triton time counts only if it measured the
kernels of this version, :data:`ERSM_KERNEL_VERSION`); the reference where no
row applies. ``"triton"`` forces the Triton code (on CPU tensors it needs
``TRITON_INTERPRET=1`` set before import); ``"compile"`` forces ``torch.compile``
of the reference for ERSM; ``"reference"`` forces PyTorch eager. A Triton
kernel that fails on the user's GPU falls back to the reference with one
warning (:func:`guarded`), unless ``ENERGYMASK_STRICT_KERNELS=1``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

BACKENDS = ("auto", "triton", "compile", "reference")
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
    """Set the process-wide backend: ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.

    ``"compile"`` applies to ERSM; the Potts kernels treat it as ``"reference"``.
    """
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
    """Whether a Potts call on ``tensor`` should launch the Triton kernel."""
    if _backend in ("reference", "compile"):
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


# ---- ERSM: the measured table -------------------------------------------------------

ERSM_KERNEL_VERSION = "v2"  # the ERSM Triton kernels of docs/design.md §5 (two passes each way)
TABLE_PATH = Path(__file__).with_name("dispatch_table.json")
MEASURED = ("eager", "compile", "triton")  # the backend names of the table's timings


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> dict:
    """The dispatch table: ``{"rows": [...], ...}`` (format in docs/design.md §5)."""
    return json.loads(Path(path or TABLE_PATH).read_text())


def dtype_class(dtype: torch.dtype) -> str:
    """The table's dtype class: "float32", "half" (float16, bfloat16) or "float64"."""
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    return str(dtype).removeprefix("torch.")


def layout_class(x: torch.Tensor) -> str:
    """The table's layout class: "channels_last" (and not also NCHW-contiguous), else "nchw"."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return "channels_last"
    return "nchw"


def fastest(row: dict, kernel_version: str = ERSM_KERNEL_VERSION) -> str:
    """The fastest current backend of a table row: "triton", "compile" or "reference".

    A Triton time measured on another kernel version does not count.
    """
    times = {name: row[f"{name}_ms"] for name in MEASURED if f"{name}_ms" in row}
    if row.get("triton_version") != kernel_version:
        times.pop("triton", None)
    best = min(times, key=times.get, default="eager")
    return "reference" if best == "eager" else best


def table_choice(device: str, channels: int, tokens: int, layout: str, dtype: str,
                 backward: bool, table: dict | None = None) -> tuple[str, dict | None]:  # fmt: skip
    """(backend, row) the table picks for ERSM on ``device`` (its name); ("reference", None)
    where no row applies.

    ``channels`` D = C·p², ``tokens`` h·w per map, ``layout`` and ``dtype`` as
    :func:`layout_class` and :func:`dtype_class` name them. Rows of the same
    device name if there are any, else of every GPU; of the same op ("ersm
    fwd+bwd" when gradients flow, else "ersm fwd"), layout and dtype class; the
    nearest in log channels plus log tokens.
    """
    if device == "cpu":
        return "reference", None
    table = table or load_table()
    op = "ersm fwd+bwd" if backward else "ersm fwd"
    rows = [r for r in table["rows"]
            if r["kernel"] == op and r["layout"] == layout and r["dtype"] == dtype]  # fmt: skip
    rows = [r for r in rows if r["device"] == device] or rows
    if not rows:
        return "reference", None

    def distance(r: dict) -> float:
        return abs(math.log2(r["channels"] / channels)) + abs(math.log2(r["map"] ** 2 / tokens))

    row = min(rows, key=distance)
    return fastest(row), row


def ersm_backend(x: torch.Tensor, token_size: int = 1, backward: bool | None = None) -> str:
    """The backend of an ERSM call on ``x``: "triton", "compile" or "reference".

    Forced backends win; ``"auto"``: the reference off CUDA and while
    ``torch.compile`` traces, the table on CUDA (:func:`table_choice`), Triton
    only where Triton imports.
    """
    if _backend == "reference":
        return "reference"
    if _backend == "compile":
        return "compile"
    if _backend == "triton":
        use_triton(x)  # raises with the reason when Triton cannot run here
        return "triton"
    if not x.is_cuda or torch.compiler.is_compiling():
        return "reference"  # inside a compiled model Inductor compiles the reference already
    if backward is None:
        backward = torch.is_grad_enabled() and x.requires_grad
    _, c, h, w = x.shape
    choice, _ = table_choice(torch.cuda.get_device_name(x.device), c * token_size**2,
                             max(1, h * w // token_size**2), layout_class(x),
                             dtype_class(x.dtype), backward)  # fmt: skip
    if choice == "triton" and not triton_available():
        return "reference"
    return choice


__all__ = ["BACKENDS", "ERSM_KERNEL_VERSION", "STRICT_ENV", "dtype_class", "ersm_backend",
           "fastest", "get_backend", "guarded", "interpreting", "layout_class", "load_table",
           "set_backend", "strict", "table_choice", "triton_available", "use_backend", "use_triton"]
