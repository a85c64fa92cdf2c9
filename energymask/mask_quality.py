"""Scores of an ERSM keep map: how much it keeps, how selectively, and where (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Per image, over its N = h·w tokens with keep probabilities k_i and mean k̄:

- ``keep_ratio`` = k̄, the mean keep probability.
- ``hard_sparsity`` = (1/N) Σ_i 1[k_i < 0.5]: share of tokens the hard mask
  closes. A uniform dimming (every k_i = 0.45) reads 1.0 here: it is not
  a measure of selectivity; the next two are.
- ``relative_sparsity`` = (1/N) Σ_i 1[k_i < k̄/2]: share of tokens kept less
  than half as much as the image's average token. 0 for any uniform map.
- ``keep_gini`` = Σ_i Σ_j |k_i − k_j| / (2 N² k̄), the Gini coefficient of the
  keep values (0 when k̄ = 0): 0 for a uniform map, (N − 1)/N when one token
  holds all the keep. A map with a share q of tokens at a and the rest at b
  has q(1 − q)|a − b| / (q·a + (1 − q)·b).
- ``entropy`` = (1/N) Σ_i H(k_i) / log 2 with H the binary entropy: 0 for a
  decided mask (every k_i in {0, 1}), 1 when every k_i = 0.5.
- ``undecided`` = (1/N) Σ_i 1[0.1 < k_i < 0.9]: share of tokens neither
  clearly kept nor clearly closed; 0 for a bimodal (decided) map, 1 for a
  dimmed one (every k_i = 0.45). Issue 20's goal for a mask that selects:
  at most 0.1 after the first epoch. On the binary map of ``gate="hard"``
  it is 0 by construction; give it the soft keep probabilities
  sigmoid(−z/T) to see how decided the gate's logits are.

With a ground-truth object mask (pixels > 0.5 are object):

- ``iou``: the hard mask ``k >= 0.5`` upsampled (nearest) from the token grid
  to the object mask's resolution against the object, pixel-wise; 1 when
  both are empty.
- ``pointing``: 1 when the highest-kept token overlaps the object (any object
  pixel inside the token's cell; ties: the first token in raster order).
  ``rank`` replaces keep as the token ranking: a binary map ties every kept
  token, so the hard gate's pointing ranks by its soft keep sigmoid(−z/T).
- ``keep_contrast`` = Σ_i f_i k_i / Σ_i f_i − Σ_i (1 − f_i) k_i / Σ_i (1 − f_i),
  with f_i the share of token i's cell that is object: mean keep on the
  object minus mean keep on the background, in [−1, 1] (> 0: the object is
  kept more). NaN for an image with no object or no background pixel.

:func:`mask_scores` gives the per-image tensors (no device sync), and
:func:`mask_quality` their means over the batch as floats.
:func:`layer_mask_scores` scores an ERSM layer's last forward: the map it
executed (``last_keep``), pointing ranked by its soft keep sigmoid(−z/T), and
``soft_undecided`` = ``undecided`` of the soft keep (for ``gate="hard"``, how
decided the logits behind the binary map are; for the soft gate the same as
``undecided``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SCORE_DEFINITIONS", "SMALL_GRID", "layer_mask_scores", "mask_quality", "mask_scores",
           "object_masks", "small_grid_warning", "undecided_share"]

#: Each score in a sentence, for reports (the formulas are in the module docstring);
#: ``soft_undecided`` is :func:`layer_mask_scores`'.
SCORE_DEFINITIONS: dict[str, str] = {
    "keep_ratio": "mean keep probability over the tokens of a keep map",
    "hard_sparsity": "share of tokens with keep < 0.5, i.e. that the hard mask 1[keep >= 0.5] "
                     "drops; a uniformly dimmed map (every keep 0.45) reads 1.0",
    "relative_sparsity": "share of tokens kept less than half as much as the image's mean "
                         "token (keep < mean / 2): 0 for any uniform map, dimmed or not",
    "keep_gini": "Gini coefficient of the keep values: 0 for a uniform map, near 1 when a "
                 "few tokens hold all the keep",
    "iou": "intersection over union of the hard mask (upsampled to pixels) and the object",
    "pointing": "1 when the highest-kept token overlaps the object (pointing game)",
    "entropy": "mean binary entropy of the keep values / log 2: 0 = decided (0 or 1), "
               "1 = every token at 0.5",
    "keep_contrast": "mean keep on the object minus mean keep on the background (token cells "
                     "weighted by their object share), in [-1, 1]; > 0: the object is kept more",
    "undecided": "share of tokens whose executed keep lies in (0.1, 0.9), neither kept nor "
                 "dropped: 0 for a binary mask (gate='hard', ours)",
    "soft_undecided": "the same share for the soft keep sigmoid(-z / T) behind the mask; "
                      "equals undecided for the authors' soft gate",
}

#: Token grids with a side below this get a warning: too few tokens to show where a mask looks.
SMALL_GRID = 4


def small_grid_warning(shape, where: str = "keep map", stacklevel: int = 3) -> str:
    """Warn when a token grid ``shape`` (..., h, w) is smaller than :data:`SMALL_GRID` on a
    side; returns the text (for a figure), or "" when the grid is large enough."""
    h, w = (int(v) for v in shape[-2:])
    if min(h, w) >= SMALL_GRID:
        return ""
    text = (f"token grid {h}x{w} is below {SMALL_GRID}x{SMALL_GRID}: too few tokens to show "
            "where the mask looks (a 64-pixel input to an ImageNet backbone of stride 32 gives "
            "2x2); use larger images (e.g. --image-size 224) or a layer of finer stride")
    warnings.warn(f"{where}: {text}", UserWarning, stacklevel=stacklevel)
    return text


def object_masks(mask: object, batch: int | None = None,
                 size: tuple[int, int] | None = None) -> Tensor:
    """A batch's object masks as a (B, H, W) bool tensor: the one place they are read.

    ``mask``: (B, H, W) or (B, 1, H, W), foreground > 0.5 (the data modules give
    floats in {0, 1}). ``batch`` / ``size``: the B / (H, W) it must have, when given.

    Raises:
        TypeError: ``mask`` is not a tensor.
        ValueError: another shape, naming the one expected.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"object_mask must be a tensor, but got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if (mask.dim() != 3 or (batch is not None and mask.shape[0] != batch)
            or (size is not None and tuple(mask.shape[1:]) != tuple(size))):
        wanted = [f"B = {batch}"] if batch is not None else []
        wanted += [f"(H, W) = {tuple(size)}"] if size is not None else []
        raise ValueError(
            "object_mask must have shape (B, H, W) or (B, 1, H, W)"
            + (f" with {', '.join(wanted)}" if wanted else "")
            + f", but got {tuple(mask.shape)}"
        )
    return mask > 0.5


def _check_keep(keep: Tensor) -> Tensor:
    if not isinstance(keep, Tensor) or keep.dim() != 3:
        shape = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
        raise ValueError(f"keep must have shape (B, h, w), but got {shape}")
    if keep.shape[1] * keep.shape[2] == 0:
        raise ValueError(f"keep must have at least one token, but got shape {tuple(keep.shape)}")
    keep = keep.float()
    if not ((keep >= 0) & (keep <= 1)).all():  # NaN fails both comparisons
        raise ValueError("keep must hold probabilities in [0, 1], but got values outside (or NaN)")
    return keep


def keep_gini(keep: Tensor) -> Tensor:
    """Gini coefficient of each image's keep values, (B, h, w) -> (B,); 0 when all are 0."""
    k = keep.flatten(1).sort(dim=1).values
    n = k.shape[1]
    # Σ_i Σ_j |k_i − k_j| = 2 Σ_i (2i − N − 1) k_(i) over the ascending order, i = 1..N.
    rank = torch.arange(1, n + 1, device=k.device, dtype=k.dtype)
    total = k.sum(1)
    pairs = (k * (2 * rank - n - 1)).sum(1)
    return torch.where(total > 0, pairs / (n * total.clamp_min(1e-30)), torch.zeros_like(total))


def keep_contrast(keep: Tensor, object_share: Tensor) -> Tensor:
    """Mean keep on the object minus on the background, (B, h, w) twice -> (B,).

    ``object_share``: share f_i of each token's cell that is object. NaN for an
    image whose f is all 0 or all 1.
    """
    k, f = keep.flatten(1), object_share.flatten(1)
    on_object, on_background = f.sum(1), (1 - f).sum(1)
    contrast = (f * k).sum(1) / on_object.clamp_min(1e-12) - ((1 - f) * k).sum(1) / (
        on_background.clamp_min(1e-12)
    )
    valid = (on_object > 0) & (on_background > 0)
    return torch.where(valid, contrast, torch.full_like(contrast, math.nan))


def undecided_share(keep: Tensor, low: float = 0.1, high: float = 0.9) -> Tensor:
    """Share of each image's tokens with keep in (low, high), (B, h, w) -> (B,)."""
    return ((keep > low) & (keep < high)).float().flatten(1).mean(1)


def mask_scores(
    keep: Tensor, object_mask: Tensor | None = None, threshold: float = 0.5,
    rank: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-image scores of a keep map (definitions in the module docstring).

    Args:
        keep: keep probabilities (B, h, w), e.g. ``layer.last_keep``.
        object_mask: optional ground truth (B, H, W) or (B, 1, H, W), H ≥ h,
            W ≥ w; > 0.5 is object. Default: None.
        threshold: hard-mask threshold of ``hard_sparsity`` and ``iou``. Default: 0.5.
        rank: optional (B, h, w) token ranking of ``pointing`` (higher = more
            kept). Default: None (keep itself).

    Returns:
        dict of (B,) float32 tensors: ``keep_ratio``, ``hard_sparsity``,
        ``relative_sparsity``, ``keep_gini``, ``entropy``, ``undecided``, and
        with an object mask also ``iou``, ``pointing`` and ``keep_contrast``.
        B = 0 gives empty tensors.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (0 < threshold <= 1)
    ):
        raise ValueError(f"threshold must be a number in (0, 1], but got {threshold!r}")
    keep = _check_keep(keep)
    b, h, w = keep.shape
    flat = keep.flatten(1)
    mean = flat.mean(1)
    if rank is not None and (not isinstance(rank, Tensor) or rank.shape != keep.shape):
        got = tuple(rank.shape) if isinstance(rank, Tensor) else type(rank).__name__
        raise ValueError(f"rank must be None or a tensor of keep's shape {tuple(keep.shape)}, "
                         f"but got {got}")
    xlogx = torch.special.xlogy(flat, flat) + torch.special.xlogy(1 - flat, 1 - flat)
    scores = {
        "keep_ratio": mean,
        "hard_sparsity": (flat < threshold).float().mean(1),
        "relative_sparsity": (flat < mean[:, None] / 2).float().mean(1),
        "keep_gini": keep_gini(keep),
        "entropy": -xlogx.mean(1) / math.log(2),
        "undecided": undecided_share(keep),
    }
    if object_mask is None:
        return scores
    obj = object_masks(object_mask, b).to(keep.device)
    if obj.shape[1] < h or obj.shape[2] < w:
        raise ValueError(
            f"object_mask {tuple(obj.shape[1:])} must be at least the token grid {(h, w)}"
        )
    hard = F.interpolate((keep >= threshold).float()[:, None], size=obj.shape[1:], mode="nearest")
    hard = hard[:, 0] > 0.5
    inter = (hard & obj).flatten(1).sum(1).float()
    union = (hard | obj).flatten(1).sum(1).float()
    scores["iou"] = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    on_grid = F.adaptive_max_pool2d(obj.float()[:, None], (h, w))[:, 0].flatten(1)
    ranking = flat if rank is None else rank.flatten(1).to(keep.device)
    scores["pointing"] = on_grid.gather(1, ranking.argmax(1)[:, None])[:, 0]
    share = F.adaptive_avg_pool2d(obj.float()[:, None], (h, w))[:, 0]
    scores["keep_contrast"] = keep_contrast(keep, share)
    return scores


def mask_quality(
    keep: Tensor, object_mask: Tensor | None = None, threshold: float = 0.5,
    rank: Tensor | None = None,
) -> dict[str, float]:
    """The batch means of :func:`mask_scores`, as floats.

    ``keep_contrast`` is the mean over the images that have both object and
    background (NaN when none has). Weight by B to average over batches. An
    empty batch (B = 0) gives ``{}``.
    """
    scores = mask_scores(keep, object_mask, threshold, rank)
    if keep.shape[0] == 0:
        return {}
    return {k: float(v.nanmean() if k == "keep_contrast" else v.mean()) for k, v in scores.items()}


def layer_mask_scores(layer: Any, object_mask: Tensor | None = None) -> dict[str, Tensor]:
    """:func:`mask_scores` of an ERSM layer's last forward, plus ``soft_undecided``.

    ``layer``: an :class:`~energymask.ersm.EnergyMask2d` after a forward
    (``last_keep``, ``last_logits``, ``temperature``). The scores are those of
    the executed map ``last_keep``; ``pointing`` ranks the tokens by the soft
    keep sigmoid(−z/T) (a binary map ties every kept token). (B,) tensors.
    """
    soft = torch.sigmoid(-layer.last_logits.float() / layer.temperature)
    scores = mask_scores(layer.last_keep, object_mask, rank=soft)
    scores["soft_undecided"] = undecided_share(soft)
    return scores
