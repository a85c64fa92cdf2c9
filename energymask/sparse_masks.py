"""Given binary masks to measure sparse execution: random tokens, blobs; exact keep ratio.

A learned ERSM mask is spatially coherent (Devynck et al., IJCAI 2026,
https://arxiv.org/abs/2604.06893); blobs stand in for it, random tokens are the
worst case for the dilation of a 3x3 convolution (docs/design.md §11).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(batch: int, size: tuple[int, int], keep: float) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep <= 1:
        raise ValueError(f"keep must be a number in [0, 1], but got {keep!r}")
    if batch < 1 or len(size) != 2 or min(size) < 1:
        raise ValueError(f"batch and size must be positive, but got batch={batch}, size={size}")


def _top(scores: Tensor, keep: float) -> Tensor:
    """1 at the round(keep·h·w) highest scores of each sample, (B, h, w) float."""
    b, h, w = scores.shape
    k = round(keep * h * w)
    mask = torch.zeros(b, h * w)
    if k:
        mask.scatter_(1, scores.reshape(b, -1).topk(k, dim=1).indices, 1.0)
    return mask.view(b, h, w)


def random_mask(batch: int, size: tuple[int, int], keep: float, seed: int = 0) -> Tensor:
    """(B, h, w) float mask with exactly round(keep·h·w) ones per sample at random tokens."""
    _check(batch, size, keep)
    g = torch.Generator().manual_seed(seed)
    return _top(torch.rand(batch, *size, generator=g), keep)


def blob_mask(
    batch: int, size: tuple[int, int], keep: float, seed: int = 0, blur: float = 0.25
) -> Tensor:
    """(B, h, w) float mask with exactly round(keep·h·w) ones per sample in a few blobs.

    White noise blurred by a Gaussian of standard deviation ``blur`` × the grid's
    shorter side, thresholded at its own top-k: one to a few blobs per sample.
    Default blur: 0.25.
    """
    _check(batch, size, keep)
    g = torch.Generator().manual_seed(seed)
    h, w = size
    sigma = max(blur * min(h, w), 0.5)
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    noise = torch.randn(batch, 1, h, w, generator=g)
    noise = F.conv2d(
        F.pad(noise, (radius, radius, 0, 0), mode="circular"), kernel.view(1, 1, 1, -1)
    )
    noise = F.conv2d(
        F.pad(noise, (0, 0, radius, radius), mode="circular"), kernel.view(1, 1, -1, 1)
    )
    noise = noise + 1e-6 * torch.rand(batch, 1, h, w, generator=g)  # ties broken at random
    return _top(noise[:, 0], keep)


__all__ = ["blob_mask", "random_mask"]
