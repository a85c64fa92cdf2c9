"""Token orderings for deletion / insertion tests at an ERSM layer (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Every ordering returns importance **scores** (B, h, w) on the token grid of the
layer: higher = more important. Deletion removes the lowest scores first,
insertion adds the highest scores first.

- ``energy``: −z (energy logit; z descending = least-kept deleted first).
- ``magnitude``: token norm ‖x_i‖₂ over its p×p×C cell (smallest deleted first).
- ``random``: seeded uniform scores.
- ``gradcam``: Captum ``LayerGradCam`` at the input of the ERSM layer (the feature
  map it sees), target = label, no ReLU, average-pooled to the token grid.
- ``feature_ablation``: Captum ``FeatureAblation`` on the features entering the
  ERSM layer with a token-grid ``feature_mask`` (baseline 0), target = label:
  the drop of the target logit when a token is zeroed.
- a user ordering: a callable ``(features (B,C,H,W), logits (B,h,w)) -> (B,h,w)``
  or a tensor of scores (B, h, w) for the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask._extras import require
from energymask.constants import ORDERINGS

Ordering = str | Callable[[Tensor, Tensor], Tensor] | Tensor


def check_orderings(orderings) -> dict[str, Ordering]:
    """Name every ordering: built-in names stay, callables/tensors become ``custom<i>``."""
    if isinstance(orderings, (str, Tensor)) or callable(orderings):
        orderings = (orderings,)
    if isinstance(orderings, dict):
        items = list(orderings.items())
    else:
        items = []
        for i, o in enumerate(orderings):
            items.append((o if isinstance(o, str) else f"custom{i}", o))
    if not items:
        raise ValueError("orderings must name at least one ordering, but got none")
    for name, o in items:
        if isinstance(o, str) and o not in ORDERINGS:
            raise ValueError(f"unknown ordering {o!r}; valid names are {list(ORDERINGS)}")
        if not isinstance(o, (str, Tensor)) and not callable(o):
            raise TypeError(f"ordering {name!r} must be a name, callable or tensor, got {o!r}")
    return dict(items)


def magnitude_scores(features: Tensor, token_size: int) -> Tensor:
    """Token norms: features (B, C, H, W) -> (B, h, w)."""
    sq = F.avg_pool2d(features.float().pow(2).sum(1, keepdim=True), token_size)
    return (sq * token_size * token_size).sqrt()[:, 0]


def random_scores(shape: tuple[int, int, int], seed: int | Tensor) -> Tensor:
    """Seeded uniform scores of ``shape`` (B, h, w).

    ``seed``: an int seeds the batch; a tensor (B,) seeds each image (image b draws
    ``rand(h, w)`` from ``seed[b]``: its scores do not depend on the batch it is in).
    """
    if isinstance(seed, Tensor):
        images = [torch.rand(shape[1:], generator=torch.Generator().manual_seed(int(s)))
                  for s in seed.tolist()]
        return torch.stack(images) if images else torch.empty(shape)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=gen)


def gradcam_scores(
    forward: Callable[[Tensor], Tensor], layer: nn.Module, x: Tensor, y: Tensor, token_size: int
) -> Tensor:
    """Captum ``LayerGradCam`` at the input of ``layer``, pooled to the token grid (B, h, w).

    ``forward`` maps ``x`` to logits and calls ``layer`` on the way: the model and
    its images, or the model cut at the layer and the layer's input.
    """
    captum = require("captum.attr", "the Grad-CAM ordering")
    with torch.enable_grad():
        cam = captum.LayerGradCam(forward, layer).attribute(
            x, target=y, attribute_to_layer_input=True
        )
    return F.avg_pool2d(cam.detach().float(), token_size)[:, 0]


def token_feature_mask(height: int, width: int, token_size: int, device=None) -> Tensor:
    """Token-grid ids (1, 1, H, W) for Captum ``feature_mask``: token (r, c) -> r*w + c."""
    h, w = height // token_size, width // token_size
    ids = torch.arange(h * w, device=device).view(1, 1, h, w)
    return ids.repeat_interleave(token_size, 2).repeat_interleave(token_size, 3)


def feature_ablation_scores(
    suffix: Callable[[Tensor], Tensor],
    features: Tensor,
    y: Tensor,
    token_size: int,
    perturbations_per_eval: int = 1,
) -> Tensor:
    """Captum ``FeatureAblation`` of each token of ``features`` (B, C, H, W) -> (B, h, w).

    ``suffix`` maps features entering the ERSM layer to logits.
    """
    captum = require("captum.attr", "the FeatureAblation ordering")
    b, _, hh, ww = features.shape
    fmask = token_feature_mask(hh, ww, token_size, features.device)
    with torch.no_grad():
        attr = captum.FeatureAblation(suffix).attribute(
            features,
            baselines=0.0,
            target=y,
            feature_mask=fmask,
            perturbations_per_eval=perturbations_per_eval,
        )
    # every cell of a token carries the token's attribution; read one per token
    return attr[:, 0, ::token_size, ::token_size].float()


def compute_scores(
    ordering: Ordering,
    *,
    features: Tensor,
    logits: Tensor,
    token_size: int,
    seed: int | Tensor,
    layer: nn.Module,
    y: Tensor,
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    suffix: Callable[[Tensor], Tensor],
    perturbations_per_eval: int = 1,
) -> Tensor:
    """Scores (B, h, w) of one ordering for one batch (higher = more important).

    ``features`` (B, C, H, W) enter ``layer``, whose energy ``logits`` are (B, h, w);
    Grad-CAM runs ``forward(inputs)`` (it calls ``layer``); FeatureAblation runs
    ``suffix(features)`` -> logits.
    """
    shape = tuple(logits.shape)
    if isinstance(ordering, Tensor):
        scores = ordering
    elif callable(ordering):
        scores = ordering(features, logits)
    elif ordering == "energy":
        scores = -logits
    elif ordering == "magnitude":
        scores = magnitude_scores(features, token_size)
    elif ordering == "random":
        scores = random_scores(shape, seed)
    elif ordering == "gradcam":
        scores = gradcam_scores(forward, layer, inputs, y, token_size)
    else:  # feature_ablation (names are checked by check_orderings)
        scores = feature_ablation_scores(suffix, features, y, token_size, perturbations_per_eval)
    if not isinstance(scores, Tensor) or tuple(scores.shape) != shape:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"ordering scores must have shape (B, h, w) = {shape}, but got {got}")
    return scores.detach().float().cpu()


__all__ = ["check_orderings", "compute_scores", "feature_ablation_scores", "gradcam_scores",
           "magnitude_scores", "random_scores", "token_feature_mask"]
