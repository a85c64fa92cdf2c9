"""Every Triton launch of the package goes through :func:`launch`.

So the launches a wrapper makes for a given shape can be recorded instead of
run (:func:`recording`, on ``meta`` tensors, no GPU): the ahead-of-time compile
check (:mod:`energymask.kernels.aot`) and the traffic model of
``benchmarks/bench_kernels.py`` read the block sizes and flags the wrappers
really choose, so they cannot drift from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](*args, num_warps=..., **constexprs)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    num_warps: int


_recorded: list[Launch] | None = None
# Upper bound given to ptxas (``.maxnreg``): left to itself it capped some
# kernels at 128 or 168 registers and spilled a few bytes rather than use more.
MAX_REGISTERS = 255


def launch(kernel: Any, grid: tuple[int, ...], args: tuple, num_warps: int = 4, **constexprs):
    """Launch ``kernel`` (or record the launch inside :func:`recording`)."""
    if _recorded is not None:
        _recorded.append(Launch(kernel, grid, args, constexprs, num_warps))
        return
    kernel[grid](*args, num_warps=num_warps, maxnreg=MAX_REGISTERS, **constexprs)


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Collect the launches made inside the block instead of running them."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


__all__ = ["MAX_REGISTERS", "Launch", "launch", "recording"]
