"""ERSM energy figures: what sets the keep (the logit z) beside the pairwise and total energy.

The keep is set by the token's logit alone: ``keep = sigmoid(-z / T)``, so low z
= kept (docs/design.md §3); the unary energy ``U = λ softplus(z)`` rises with z.
The pairwise term ``P = γ softplus(Σ_{j∈N8} <x̂_i, x̂_j>)`` and the total
``E = U + P`` do not set the keep: they weight it in the regulariser
``mean(keep · E)``. So "low energy = kept" holds for z and U, not for E: with
γ > λ the total is mostly P, and in a trained model it can be highest where the
keep is highest. Given ``logits``, the first map is z on a diverging scale
centred on 0 (keep = 0.5); without, it is U.

The pairwise term sums similarities over the 8 neighbours of a token, so tokens
on the grid's outer ring (3 or 5 neighbours, the rest zero padding) have a much
lower pairwise energy for a reason that has nothing to do with the image; left
on the colour scale they dominate it. By default that ring is drawn in grey and
left out of the P and E colour scales (``border=1``); ``border=0`` shows it.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from ._common import as_image, data_range, new_axes, to_numpy

__all__ = ["plot_energy_maps"]

TITLES = ("unary U = λ softplus(z)\n(rises with z: low = kept)",
          "pairwise P\n(does not set the keep)", "total E = U + P\n(does not set the keep)")
LOGIT_TITLE = "logit z: sets the keep\nkeep = σ(−z/T), low z = kept"


def _without_border(m: np.ndarray, border: int) -> np.ndarray:
    """``m`` (B, h, w) with its outer ``border`` tokens set to NaN."""
    if border == 0:
        return m
    out = np.full_like(m, np.nan)
    out[:, border:-border, border:-border] = m[:, border:-border, border:-border]
    return out


def plot_energy_maps(unary, pairwise, total=None, images=None, axes=None, max_rows: int = 4,
                     border: int = 1, logits=None):
    """Rows of [image |] logit z (or unary U) | pairwise | total energy maps, each with a
    colour bar.

    Args:
        unary, pairwise: (B, h, w) or (h, w) maps (e.g. ``EnergyMask2d.last_unary``).
        total: same shape; ``unary + pairwise`` when None.
        logits: the same shape (``EnergyMask2d.last_logits``): drawn first instead of
            ``unary``, on a scale symmetric about 0 (blue: kept). Default: None.
        images: optional (B, C, H, W) inputs (C in {1, 3}, values in [0, 1]), drawn first.
        axes: optional (rows, 3) axes, or (rows, 4) with ``images``. Default: a new figure.
        max_rows: at most this many rows. Default: 4.
        border: tokens of the outer ring drawn in grey and kept out of the P and E
            colour scales (0 = none). Default: 1 (the pairwise term's 8-neighbourhood).

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 3), or (rows, 4) with ``images``.
    """
    u, p = to_numpy(unary), to_numpy(pairwise)
    t = to_numpy(total) if total is not None else (u + p if u.shape == p.shape else u)
    if u.shape != p.shape or u.shape != t.shape or u.ndim not in (2, 3):
        raise ValueError(f"unary, pairwise and total must share a (B, h, w) or (h, w) shape, "
                         f"but got {u.shape}, {p.shape}, {t.shape}")
    z = None if logits is None else to_numpy(logits)
    if z is not None and z.shape != u.shape:
        raise ValueError(f"logits must have the shape of unary {u.shape}, but got {z.shape}")
    if u.ndim == 2:
        u, p, t = u[None], p[None], t[None]
        z = None if z is None else z[None]
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
    first_map = (z if z is not None else u)[:rows]  # per token: no border effect
    maps = [first_map] + [_without_border(m[:rows], border) for m in (p, t)]
    for i in range(rows):
        if imgs is not None:
            img = as_image(imgs[i])
            ax[i, 0].imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
        for j, (a, m) in enumerate(zip(ax[i, first:], maps, strict=True)):
            if j == 0 and z is not None:  # diverging about z = 0 (keep 0.5): blue = kept
                half = max(float(np.nanmax(np.abs(m[i]))), 1e-6)
                im = a.imshow(m[i], cmap="coolwarm", vmin=-half, vmax=half)
                bar = fig.colorbar(im, ax=a, shrink=0.8)
                bar.set_label("z (< 0: keep > 0.5)", fontsize=7)
            else:
                lo, hi = data_range(m[i])
                im = a.imshow(m[i], cmap=cmap, vmin=lo, vmax=hi)
                bar = fig.colorbar(im, ax=a, shrink=0.8)
            bar.ax.tick_params(labelsize=7)
    heads = (("input",) if imgs is not None else ()) + (
        (LOGIT_TITLE,) if z is not None else TITLES[:1]) + TITLES[1:]
    for a, name in zip(ax[0], heads, strict=True):
        a.set_title(name, fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    notes = ["P and E enter only the regulariser mean(keep · E)"]
    if border:
        notes.append(f"grey: the outer {border}-token ring (fewer neighbours, zero padding), "
                     "left out of the P and E colour scales")
    fig.supxlabel("; ".join(notes), fontsize=8)
    return fig, ax
