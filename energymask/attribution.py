"""Attribution maps beside the ERSM keep map, and their rank agreement (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Maps (higher = more important), each at input resolution (B, H, W) and on the
ERSM token grid (B, h, w):

- ``occlusion``: Captum ``Occlusion`` with a sliding ``window``×``window`` patch
  (all channels, stride ``window // 2``, baseline 0), summed over channels;
  pooled to the grid by adaptive average pooling.
- ``gradcam``: Captum ``LayerGradCam`` at the input of the ERSM layer (no ReLU),
  upsampled bilinearly to the input; average-pooled over each token on the grid.

``spearman[name]`` is the Spearman rank correlation per image between the
grid map and the keep map ``layer.last_keep`` (ties get average ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask._extras import require
from energymask.deletion import find_ersm_layer
from energymask.ersm import forcing
from energymask.evaluation import eval_mode, to_model_device
from energymask.orderings import gradcam_scores

__all__ = ["attribution_maps", "rankdata", "spearman"]


def rankdata(x: Tensor) -> Tensor:
    """Ranks (1..n) along the last dim with ties averaged (like scipy's ``rankdata``)."""
    x = x.double()
    n = x.shape[-1]
    sorted_x, order = x.sort(dim=-1, stable=True)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(x)
    # average rank of each run of equal values: mean position over equal elements
    eq = sorted_x.unsqueeze(-1) == sorted_x.unsqueeze(-2)  # (..., n, n)
    avg = (eq.double() * pos.unsqueeze(-2)).sum(-1) / eq.double().sum(-1)
    ranks = torch.empty_like(avg)
    ranks.scatter_(-1, order, avg)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation per row of a, b (B, ...) flattened; NaN for a constant row."""
    ra, rb = rankdata(a.flatten(1)), rankdata(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return (ra * rb).sum(1) / den


def attribution_maps(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layer: str | None = None,
    window: int = 8,
) -> dict:
    """Occlusion and GradCAM maps next to the ERSM keep map.

    Args:
        model: classifier with an :class:`EnergyMask2d`.
        images: (B, C, H, W).
        targets: class per image (B,).
        layer: name of the ERSM layer when there are several.
        window: occlusion window side in pixels. Default: 8.

    Returns:
        dict with ``keep`` (B, h, w), ``maps`` {name: (B, H, W)}, ``grid_maps``
        {name: (B, h, w)} and ``spearman`` {name: (B,)}. B = 0 gives empty tensors.
    """
    captum = require("captum.attr", "attribution maps")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), but got {tuple(images.shape)}")
    targets = torch.as_tensor(targets)
    if targets.shape != images.shape[:1]:
        raise ValueError(f"targets must have shape (B,) = ({images.shape[0]},), but got "
                         f"{tuple(targets.shape)}")
    if isinstance(window, bool) or not isinstance(window, int) or not (
        1 <= window <= min(images.shape[-2:])
    ):
        raise ValueError(
            f"window must be an int in [1, {min(images.shape[-2:])}], but got {window!r}"
        )
    _, ersm = find_ersm_layer(model, layer)
    images, targets = to_model_device(model, images), to_model_device(model, targets)
    c, hh, ww = images.shape[1:]
    with eval_mode(model), forcing(ersm, None):
        with torch.no_grad():
            model(images)
        keep = ersm.last_keep.float().cpu()
        h, w = keep.shape[1:]
        if images.shape[0] == 0:  # Captum cannot run on an empty batch
            empty, grid = images.new_zeros(0, hh, ww).cpu(), keep.new_zeros(0, h, w)
            names = ("occlusion", "gradcam")
            return {"keep": keep, "maps": dict.fromkeys(names, empty),
                    "grid_maps": dict.fromkeys(names, grid),
                    "spearman": dict.fromkeys(names, keep.new_zeros(0))}
        stride = max(1, window // 2)
        with torch.no_grad():
            occ = captum.Occlusion(model).attribute(
                images,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=0.0,
                target=targets,
            )
        occ = occ.sum(1).float().cpu()
        cam = gradcam_scores(model, ersm, images, targets, 1)  # (B, H', W') at the layer
        cam_grid = F.avg_pool2d(cam[:, None], ersm.token_size)[:, 0].cpu()
        cam_big = F.interpolate(cam[:, None], size=(hh, ww), mode="bilinear", align_corners=False)
    maps = {"occlusion": occ, "gradcam": cam_big[:, 0].cpu()}
    grid_maps = {
        "occlusion": F.adaptive_avg_pool2d(occ[:, None], (h, w))[:, 0],
        "gradcam": cam_grid,
    }
    return {
        "keep": keep,
        "maps": maps,
        "grid_maps": grid_maps,
        "spearman": {k: spearman(v, keep).float() for k, v in grid_maps.items()},
    }
