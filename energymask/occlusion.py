"""Structured occlusion robustness in input space (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

The image is cut into square cells of ``patch_size`` (the last row / column
clipped at the border); ``round(f · cells)`` cells are filled with a baseline,
so a fraction f of the image is occluded (exactly f = 0 and f = 1; in between
up to the clipped border cells). Placement:

- ``random``: cells drawn uniformly (seeded; batch i uses ``seed + i``, the same
  occlusions for every model compared; :func:`occlusion_hits` also seeds per image).
- ``object`` / ``background``: cells sorted by the fraction of object pixels
  (from the ground-truth mask, descending / ascending), ties broken at random;
  the first ones are occluded.

Fill: ``zero``, ``mean`` (per image and channel), ``noise`` (Gaussian with the
image's per-channel mean and std, seeded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask.constants import OCCLUSION_FRACTIONS, OCCLUSION_PLACEMENTS
from energymask.evaluation import (
    eval_mode,
    loader_length,
    progress_bar,
    split_batch,
    to_model_device,
)
from energymask.mask_quality import object_masks

__all__ = ["OcclusionResult", "occlude", "occlusion_robustness"]

FILLS = ("zero", "mean", "noise")


@dataclass
class OcclusionResult:
    """``accuracy[model][i]``: accuracy with a fraction ``fractions[i]`` occluded."""

    fractions: list[float]
    accuracy: dict[str, list[float]]
    num_samples: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def occlude(
    x: Tensor,
    fraction: float,
    patch_size: int,
    placement: str = "random",
    fill: str = "zero",
    object_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Occluded copy of images x (B, C, H, W). See the module docstring."""
    b, c, hh, ww = x.shape
    gh, gw = math.ceil(hh / patch_size), math.ceil(ww / patch_size)
    cells = gh * gw
    n = round(fraction * cells)
    if n == 0:
        return x.clone()
    tie = torch.rand(b, cells, generator=generator)
    if placement == "random":
        key = tie
    else:
        if object_mask is None:
            raise ValueError(
                f"placement={placement!r} needs object masks (batches (x, y, mask)), but got none"
            )
        obj = object_masks(object_mask, size=(hh, ww)).float().cpu()
        pad = (0, gw * patch_size - ww, 0, gh * patch_size - hh)
        frac = F.avg_pool2d(F.pad(obj[:, None], pad), patch_size).flatten(1)
        key = (frac if placement == "object" else -frac) + 1e-3 * tie  # random ties
    chosen = key.argsort(1, descending=True)[:, :n]
    grid = torch.zeros(b, cells)
    grid.scatter_(1, chosen, 1.0)
    grid = grid.view(b, 1, gh, gw).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    occ = grid[:, :, :hh, :ww].to(x.device, torch.bool)
    if fill == "zero":
        base = torch.zeros_like(x)
    else:
        mean = x.mean((2, 3), keepdim=True).expand_as(x)
        if fill == "mean":
            base = mean
        else:
            std = x.std((2, 3), keepdim=True) if hh * ww > 1 else torch.zeros_like(mean)
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            base = mean + std * noise
    return torch.where(occ, base, x)


def check_occlusion_args(models, fractions, patch_size, placement, fill):
    """``(models as a dict, fractions as floats)`` after checking the arguments of
    :func:`occlusion_robustness`."""
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not models:
        raise ValueError("models must hold at least one model, but got none")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in [0, 1], but got {fractions}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, but got {patch_size!r}")
    if placement not in OCCLUSION_PLACEMENTS:
        raise ValueError(f"placement must be one of {list(OCCLUSION_PLACEMENTS)}, "
                         f"but got {placement!r}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {list(FILLS)}, but got {fill!r}")
    return models, fractions


def occlusion_hits(
    models: dict[str, nn.Module],
    x: Tensor,
    y: Tensor,
    mask: Tensor | None,
    fractions: Sequence[float],
    patch_size: int,
    placement: str,
    fill: str,
    seed: int | Tensor,
) -> dict[str, Tensor]:
    """One batch (B ≥ 1) of :func:`occlusion_robustness`: per model, whether each image is
    classified right at each fraction, (F, B) bool on the CPU.

    ``seed``: an int seeds the batch's occlusions (the plain function: seed + batch index);
    a tensor (B,) seeds each image (the Lightning callback: seed + dataset index, so an
    image's occlusion does not depend on the batch it is in).
    """
    if patch_size > min(x.shape[-2:]):
        raise ValueError(
            f"patch_size must be <= the image size {tuple(x.shape[-2:])}, but got {patch_size}"
        )
    hits = {name: torch.zeros(len(fractions), y.shape[0], dtype=torch.bool) for name in models}
    for j, f in enumerate(fractions):
        if isinstance(seed, Tensor):
            xo = torch.cat([
                occlude(x[b : b + 1], f, patch_size, placement, fill,
                        None if mask is None else mask[b : b + 1],
                        torch.Generator().manual_seed(int(s)))
                for b, s in enumerate(seed.tolist())
            ])  # fmt: skip
        else:
            gen = torch.Generator().manual_seed(seed)
            xo = occlude(x, f, patch_size, placement, fill, mask, gen)
        for name, model in models.items():
            hits[name][j] = model(to_model_device(model, xo)).argmax(-1).cpu() == y.cpu()
    return hits


def occlusion_robustness(
    models: dict[str, nn.Module] | nn.Module,
    dataloader: Iterable,
    fractions: Sequence[float] = OCCLUSION_FRACTIONS,
    patch_size: int = 8,
    placement: str = "random",
    fill: str = "zero",
    seed: int = 0,
    progress: bool | None = None,
) -> OcclusionResult:
    """Accuracy of each model on images with a fraction f occluded by square patches.

    Args:
        models: one model or a dict name -> model (all see the same occlusions).
        dataloader: yields (x, y) or (x, y, object_mask) with mask (B, 1, H, W) or (B, H, W).
        fractions: occluded fractions in [0, 1]. Default:
            :data:`~energymask.constants.OCCLUSION_FRACTIONS`.
        patch_size: side of a square patch in pixels. Default: 8.
        placement: ``"random"``, ``"object"`` or ``"background"``. Default: ``"random"``.
        fill: ``"zero"``, ``"mean"`` or ``"noise"``. Default: ``"zero"``.
        seed: seed of placements and noise. Default: 0.
        progress: progress bar, see :func:`energymask.evaluation.progress_bar`.
            Default: None (on a terminal, for runs over 2 s).

    Empty batches are skipped; a dataloader without any sample is an error.
    """
    models, fractions = check_occlusion_args(models, fractions, patch_size, placement, fill)
    correct = {name: torch.zeros(len(fractions), dtype=torch.long) for name in models}
    total = n_batches = 0
    bar = progress_bar(loader_length(dataloader), "occlusion", progress)
    with ExitStack() as stack, torch.no_grad(), bar:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        for i, batch in enumerate(dataloader):
            n_batches += 1
            bar.update()
            x, y, mask = split_batch(batch)
            if y.shape[0] == 0:
                continue
            hits = occlusion_hits(models, x, y, mask, fractions, patch_size, placement, fill,
                                  seed + i)
            for name, h in hits.items():
                correct[name] += h.sum(1)
            total += y.shape[0]
    if n_batches == 0:
        raise ValueError("dataloader is empty: it yielded no batch")
    if total == 0:
        raise ValueError(f"dataloader yielded {n_batches} batches, all empty (0 samples)")
    settings = dict(patch_size=patch_size, placement=placement, fill=fill, seed=seed)
    return OcclusionResult(
        fractions=fractions,
        accuracy={k: (v.double() / total).tolist() for k, v in correct.items()},
        num_samples=total,
        settings=settings,
    )
