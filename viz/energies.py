"""ERSM energy figures: the input image beside its unary, pairwise and total energy maps.

Low energy = kept (``keep = sigmoid(-E / T)``, docs/design.md §3). The pairwise term
sums similarities over the 8 neighbours of a token, so tokens on the grid's
outer ring (3 or 5 neighbours, the rest zero padding) have a much lower pairwise
energy for a reason that has nothing to do with the image; left on the colour
scale they dominate it. By default that ring is drawn in grey and left out of
every colour scale (``border=1``); ``border=0`` shows it.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from ._common import as_image, data_range, new_axes, to_numpy

__all__ = ["plot_energy_maps"]

TITLES = ("unary U", "pairwise P", "total E = U + P")


def _without_border(m: np.ndarray, border: int) -> np.ndarray:
    """``m`` (B, h, w) with its outer ``border`` tokens set to NaN."""
    if border == 0:
        return m
    out = np.full_like(m, np.nan)
    out[:, border:-border, border:-border] = m[:, border:-border, border:-border]
    return out


def plot_energy_maps(unary, pairwise, total=None, images=None, axes=None, max_rows: int = 4,
                     border: int = 1):
    """Rows of [image |] unary | pairwise | total energy maps, each with a colour bar.

    Args:
        unary, pairwise: (B, h, w) or (h, w) maps (e.g. ``EnergyMask2d.last_unary``).
        total: same shape; ``unary + pairwise`` when None.
        images: optional (B, C, H, W) inputs (C in {1, 3}, values in [0, 1]), drawn first.
        axes: optional (rows, 3) axes, or (rows, 4) with ``images``. Default: a new figure.
        max_rows: at most this many rows. Default: 4.
        border: tokens of the outer ring drawn in grey and kept out of the colour
            scales (0 = none). Default: 1 (the pairwise term's 8-neighbourhood).

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 3), or (rows, 4) with ``images``.
    """
    u, p = to_numpy(unary), to_numpy(pairwise)
    t = to_numpy(total) if total is not None else (u + p if u.shape == p.shape else u)
    if u.shape != p.shape or u.shape != t.shape or u.ndim not in (2, 3):
        raise ValueError(f"unary, pairwise and total must share a (B, h, w) or (h, w) shape, "
                         f"but got {u.shape}, {p.shape}, {t.shape}")
    if u.ndim == 2:
        u, p, t = u[None], p[None], t[None]
    if not isinstance(border, int) or border < 0 or 2 * border >= min(u.shape[1:]):
        raise ValueError(f"border must be an int in [0, {(min(u.shape[1:]) - 1) // 2}] for a "
                         f"{u.shape[1:]} grid, but got {border!r}")
    imgs = None if images is None else to_numpy(images)
    if imgs is not None and (imgs.ndim != 4 or imgs.shape[0] < min(u.shape[0], max_rows)):
        raise ValueError(f"images must be (B, C, H, W) with B >= the maps' rows, "
                         f"but got {imgs.shape}")
    rows = min(u.shape[0], max_rows)
    first = 0 if imgs is None else 1
    fig, ax = new_axes(rows, 3 + first, scale=2.3, axes=axes)
    cmap = colormaps["magma"].with_extremes(bad="lightgrey")
    maps = [_without_border(m[:rows], border) for m in (u, p, t)]
    for i in range(rows):
        if imgs is not None:
            img = as_image(imgs[i])
            ax[i, 0].imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
        for a, m in zip(ax[i, first:], maps, strict=True):
            lo, hi = data_range(m[i])
            im = a.imshow(m[i], cmap=cmap, vmin=lo, vmax=hi)
            fig.colorbar(im, ax=a, shrink=0.8).ax.tick_params(labelsize=7)
    heads = (("input",) if imgs is not None else ()) + TITLES
    for a, name in zip(ax[0], heads, strict=True):
        a.set_title(name, fontsize=9)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    if border:
        fig.supxlabel(f"grey: the outer {border}-token ring (fewer neighbours, zero padding), "
                      "left out of the colour scales; low energy = kept", fontsize=8)
    return fig, ax
