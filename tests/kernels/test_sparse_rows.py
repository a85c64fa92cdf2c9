"""Row gather / scatter: the PyTorch path and the Triton kernels (interpreter) against indexing."""

import pytest
import torch

from energymask.kernels import use_backend
from energymask.kernels.dispatch import triton_available
from energymask.kernels.sparse_rows import gather_rows, scatter_rows

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def _case(n: int, m: int, c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(m, c, generator=g)
    idx = torch.randperm(m, generator=g)[:n]
    return src, idx


@pytest.mark.parametrize("n, m, c", [(0, 5, 3), (1, 1, 1), (37, 50, 200), (70, 90, 129)])
def test_pytorch_path_is_indexing(n, m, c):
    src, idx = _case(n, m, c)
    assert torch.equal(gather_rows(src, idx), src[idx])
    dst = torch.zeros(m, c)
    scatter_rows(dst, idx, src[:n])
    expected = torch.zeros(m, c)
    expected[idx] = src[:n]
    assert torch.equal(dst, expected)


@needs_triton
@pytest.mark.parametrize("n, m, c", [(37, 50, 200), (33, 40, 128), (1, 3, 1)])
def test_triton_kernels_tile_rows_and_channels(n, m, c):
    # n and c not multiples of BLOCK_R = 32 and BLOCK_C = 128: the edge tiles are masked
    src, idx = _case(n, m, c, seed=1)
    with use_backend("triton"):
        got = gather_rows(src, idx)
        dst = torch.full((m, c), -1.0)
        scatter_rows(dst, idx, got)
    assert torch.equal(got, src[idx])
    expected = torch.full((m, c), -1.0)
    expected[idx] = src[idx]
    assert torch.equal(dst, expected)


def test_errors_name_the_argument():
    src, idx = _case(4, 6, 3)
    with pytest.raises(ValueError, match="rows must be a contiguous"):
        gather_rows(src.t(), idx)
    with pytest.raises(ValueError, match="idx must be a 1D integer"):
        gather_rows(src, idx.float())
    with pytest.raises(ValueError, match=r"values must have shape \(N, C\) = \(4, 3\)"):
        scatter_rows(src, idx, torch.zeros(4, 2))
