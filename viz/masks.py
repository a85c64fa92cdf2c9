"""Mask figures: image | keep map | masked image, and PB-EDropout EMA masks per channel."""

from __future__ import annotations

import numpy as np

from energymask.viz._common import as_image, new_axes, to_numpy, upsample

__all__ = ["plot_mask_grid", "plot_ema_masks"]


def plot_mask_grid(images, keep_maps, object_masks=None, axes=None, max_rows: int = 8):
    """One row per image: the image, its keep map (with the object outline), the masked image.

    Args:
        images: (B, C, H, W) with C in {1, 3}, values in [0, 1].
        keep_maps: (B, h, w) keep probabilities or binary masks on the token grid
            (e.g. ``EnergyMask2d.last_keep``), upsampled to (H, W) by nearest neighbour.
        object_masks: optional (B, 1, H, W) ground-truth masks, drawn as a contour.
        axes: optional (rows, 3) axes to draw into. Default: a new figure.
        max_rows: at most this many images. Default: 8.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 3).
    """
    imgs, keeps = to_numpy(images), to_numpy(keep_maps)
    if imgs.ndim != 4 or keeps.ndim != 3 or imgs.shape[0] != keeps.shape[0]:
        raise ValueError(f"images must be (B, C, H, W) and keep_maps (B, h, w), "
                         f"but got {imgs.shape} and {keeps.shape}")
    rows = min(imgs.shape[0], max_rows)
    fig, ax = new_axes(rows, 3, axes=axes)
    size = imgs.shape[-2:]
    for i in range(rows):
        img = as_image(imgs[i])
        keep = upsample(keeps[i], size)
        masked = img * (keep[..., None] if img.ndim == 3 else keep)
        cmap = None if img.ndim == 3 else "gray"
        ax[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax[i, 1].imshow(keep, cmap="viridis", vmin=0, vmax=1)
        ax[i, 2].imshow(masked, cmap=cmap, vmin=0, vmax=1)
        if object_masks is not None:
            obj = to_numpy(object_masks[i]).reshape(size)
            for a in ax[i, :2]:
                a.contour(obj, levels=[0.5], colors="r", linewidths=0.8)
        ax[i, 1].set_title(f"keep {keep.mean():.2f}", fontsize=8)
    for a, t in zip(ax[0], ("image", None, "masked"), strict=True):
        if t:
            a.set_title(t, fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    return fig, ax


def plot_ema_masks(ema, axes=None, ncols: int = 8, max_channels: int = 64):
    """PB-EDropout EMA masks, one panel per channel.

    Args:
        ema: (C, h, w) EMA of the chosen masks, values in [0, 1].
        axes: optional axes (rows * ncols of them). Default: a new figure.
        ncols: panels per row. Default: 8.
        max_channels: at most this many channels. Default: 64.

    Returns:
        ``(fig, axes)``; unused panels are hidden.
    """
    e = to_numpy(ema)
    if e.ndim != 3:
        raise ValueError(f"ema must be (C, h, w), but got {e.shape}")
    c = min(e.shape[0], max_channels)
    ncols = min(ncols, c)
    rows = int(np.ceil(c / ncols))
    fig, ax = new_axes(rows, ncols, scale=1.2, axes=axes)
    for k, a in enumerate(ax.flat):
        a.set_xticks([])
        a.set_yticks([])
        if k >= c:
            a.set_visible(False)
            continue
        a.imshow(e[k], cmap="viridis", vmin=0, vmax=1)
        a.set_title(f"ch {k}", fontsize=7)
    return fig, ax
