"""Mask quality against a ground-truth object mask (DESIGN.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

- ``iou``: the hard mask ``keep >= 0.5`` is upsampled (nearest) from the token
  grid to the object mask's resolution and compared pixel-wise with the object.
- ``pointing``: 1 when the highest-kept token overlaps the object (any object
  pixel inside the token's cell; ties: the first token in raster order).
- ``keep_ratio``: mean keep probability.
- ``entropy``: mean binary entropy of the keep map divided by log 2, in [0, 1]
  (0 = fully decided mask, 1 = every token at 0.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_quality"]


def _object_mask(object_mask: Tensor, batch: int) -> Tensor:
    if object_mask.dim() == 4 and object_mask.shape[1] == 1:
        object_mask = object_mask[:, 0]
    if object_mask.dim() != 3 or object_mask.shape[0] != batch:
        raise ValueError(
            f"object_mask must have shape (B, H, W) or (B, 1, H, W) with B = {batch}, "
            f"but got {tuple(object_mask.shape)}"
        )
    return object_mask > 0.5


def mask_quality(keep: Tensor, object_mask: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Per-image scores of a keep map against the object.

    Args:
        keep: keep probabilities (B, h, w), e.g. ``layer.last_keep``.
        object_mask: ground truth (B, H, W) or (B, 1, H, W); > 0.5 is object.
        threshold: hard-mask threshold. Default: 0.5.

    Returns:
        dict of (B,) float tensors: ``iou``, ``pointing``, ``keep_ratio``, ``entropy``.
        An image with an empty union has IoU 1 (both empty).
    """
    if keep.dim() != 3:
        raise ValueError(f"keep must have shape (B, h, w), but got {tuple(keep.shape)}")
    b, h, w = keep.shape
    obj = _object_mask(object_mask, b).to(keep.device)
    big, bw = obj.shape[1:]
    if big < h or bw < w:
        raise ValueError(f"object_mask ({big}, {bw}) must be at least the token grid ({h}, {w})")
    keep = keep.float()
    hard = F.interpolate((keep >= threshold).float()[:, None], size=(big, bw), mode="nearest")
    hard = hard[:, 0] > 0.5
    inter = (hard & obj).flatten(1).sum(1).float()
    union = (hard | obj).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    on_grid = F.adaptive_max_pool2d(obj.float()[:, None], (h, w))[:, 0].flatten(1)
    best = keep.flatten(1).argmax(1)
    pointing = on_grid.gather(1, best[:, None])[:, 0]
    k = keep.clamp(1e-12, 1 - 1e-12)
    ent = -(k * k.log() + (1 - k) * (1 - k).log()).flatten(1).mean(1) / math.log(2)
    return {
        "iou": iou,
        "pointing": pointing,
        "keep_ratio": keep.flatten(1).mean(1),
        "entropy": ent,
    }
