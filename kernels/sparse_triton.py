"""Triton row gather and scatter for sparse execution (energymask/sparse.py, docs/design.md §11).

DynConv (Verelst & Tuytelaars, CVPR 2020, https://arxiv.org/abs/1912.03203)
gathers the active positions of a channels-last feature map into a dense
(N, C) matrix, runs the convolution as a matrix product on it, and scatters the
result back. Both moves are row copies through an index:

    gather:   out[n, c]        = src[idx[n], c]        (N, C) from (M, C)
    scatter:  dst[idx[n], c]   = values[n, c]          rows of idx are distinct

A program copies a BLOCK_R x BLOCK_C tile: rows on grid axis 0, channels on
axis 1 (C is the contiguous axis, so BLOCK_C is the wide one). Row offsets are
int64 (M·C exceeds 2^31 at batch 64, 56x56, 2048 channels). The im2col of a
3x3 convolution is a gather with N·9 indices (one per tap).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import launch

BLOCK_R = 32
BLOCK_C = 128


@triton.jit
def _gather_rows(src_ptr, idx_ptr, out_ptr, n, c, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n
    ok = row_ok[:, None] & (cols[None, :] < c)
    source = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    values = tl.load(src_ptr + source[:, None] * c + cols[None, :], mask=ok, other=0.0)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * c + cols[None, :], values, mask=ok)


@triton.jit
def _scatter_rows(dst_ptr, idx_ptr, val_ptr, n, c, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n
    ok = row_ok[:, None] & (cols[None, :] < c)
    target = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    values = tl.load(val_ptr + rows.to(tl.int64)[:, None] * c + cols[None, :], mask=ok, other=0.0)
    tl.store(dst_ptr + target[:, None] * c + cols[None, :], values, mask=ok)


def _grid(n: int, c: int) -> tuple[int, int]:
    return (triton.cdiv(n, BLOCK_R), triton.cdiv(c, BLOCK_C))


def gather_rows(src: Tensor, idx: Tensor) -> Tensor:
    """``src[idx]`` for a contiguous (M, C) ``src`` and int64 (N,) ``idx``."""
    out = torch.empty(idx.shape[0], src.shape[1], dtype=src.dtype, device=src.device)
    if idx.shape[0]:
        launch(_gather_rows, _grid(idx.shape[0], src.shape[1]),
               (src, idx, out, idx.shape[0], src.shape[1]),
               BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)  # fmt: skip
    return out


def scatter_rows(dst: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``dst[idx] = values`` in place (distinct ``idx``); returns ``dst``."""
    if idx.shape[0]:
        launch(_scatter_rows, _grid(idx.shape[0], dst.shape[1]),
               (dst, idx, values, idx.shape[0], dst.shape[1]),
               BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)  # fmt: skip
    return dst


__all__ = ["gather_rows", "scatter_rows"]
