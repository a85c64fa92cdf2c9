"""ERSM energy figures: unary, pairwise and total energy maps side by side."""

from __future__ import annotations

from energymask.viz._common import new_axes, to_numpy

__all__ = ["plot_energy_maps"]


def plot_energy_maps(unary, pairwise, total=None, axes=None, max_rows: int = 4):
    """Rows of unary | pairwise | total energy maps with colour bars.

    Args:
        unary, pairwise: (B, h, w) or (h, w) maps (e.g. ``EnergyMask2d.last_unary``).
        total: same shape; ``unary + pairwise`` when None.
        axes: optional (rows, 3) axes. Default: a new figure.
        max_rows: at most this many rows. Default: 4.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 3).
    """
    u, p = to_numpy(unary), to_numpy(pairwise)
    t = to_numpy(total) if total is not None else (u + p if u.shape == p.shape else u)
    if u.shape != p.shape or u.shape != t.shape or u.ndim not in (2, 3):
        raise ValueError(f"unary, pairwise and total must share a (B, h, w) or (h, w) shape, "
                         f"but got {u.shape}, {p.shape}, {t.shape}")
    if u.ndim == 2:
        u, p, t = u[None], p[None], t[None]
    rows = min(u.shape[0], max_rows)
    fig, ax = new_axes(rows, 3, scale=2.4, axes=axes)
    for i in range(rows):
        for a, m, name in zip(ax[i], (u[i], p[i], t[i]), ("unary", "pairwise", "total"),
                              strict=True):
            im = a.imshow(m, cmap="magma")
            fig.colorbar(im, ax=a, shrink=0.8)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(name, fontsize=9)
    return fig, ax
