"""Row gather / scatter through an index: the data movement of sparse execution (design §11).

``gather_rows(src, idx)`` = ``src[idx]`` and ``scatter_rows(dst, idx, values)``
sets ``dst[idx] = values`` in place, for (M, C) row-major matrices (a
channels-last feature map seen as (B·H·W, C)). On CUDA tensors the Triton
kernels of :mod:`energymask.kernels.sparse_triton` run (through
:func:`~energymask.kernels.dispatch.guarded`: a failing kernel warns once and
the PyTorch path takes over); elsewhere ``index_select`` / ``index_copy_``.
"""

from __future__ import annotations

from torch import Tensor

from .dispatch import guarded, use_triton


def _check(src: Tensor, idx: Tensor) -> None:
    if src.dim() != 2 or not src.is_contiguous():
        raise ValueError(
            f"rows must be a contiguous (M, C) matrix, but got shape {tuple(src.shape)}"
        )
    if idx.dim() != 1 or idx.is_floating_point():
        raise ValueError(f"idx must be a 1D integer tensor, but got {idx.dtype} {tuple(idx.shape)}")


def gather_rows(src: Tensor, idx: Tensor) -> Tensor:
    """(N, C) = ``src[idx]``: ``src`` (M, C) contiguous, ``idx`` (N,) int64 in [0, M)."""
    _check(src, idx)
    if use_triton(src):
        from . import sparse_triton

        return guarded("gather_rows", lambda: sparse_triton.gather_rows(src, idx.contiguous()),
                       lambda: src.index_select(0, idx))  # fmt: skip
    return src.index_select(0, idx)


def scatter_rows(dst: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``dst[idx] = values`` in place, returns ``dst``: ``idx`` (N,) distinct, ``values`` (N, C)."""
    _check(dst, idx)
    if values.shape != (idx.shape[0], dst.shape[1]):
        raise ValueError(
            f"values must have shape (N, C) = {(idx.shape[0], dst.shape[1])}, "
            f"but got {tuple(values.shape)}"
        )
    if use_triton(dst):
        from . import sparse_triton

        idx, values = idx.contiguous(), values.contiguous()
        return guarded("scatter_rows", lambda: sparse_triton.scatter_rows(dst, idx, values),
                       lambda: dst.index_copy_(0, idx, values))  # fmt: skip
    return dst.index_copy_(0, idx, values)


__all__ = ["gather_rows", "scatter_rows"]
