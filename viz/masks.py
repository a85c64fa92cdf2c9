"""Mask figures: ERSM keep maps (on their own, over the image, applied to it), two or
more models' keep maps side by side on the same images, and PB-EDropout keep
frequencies per channel.

Keep values are probabilities, so keep maps are drawn on [0, 1] by default: a
map between 0.480 and 0.491 looks uniformly half kept, as it is, not half kept
and half dropped. ``data_range=True`` stretches the colours over the data's
min..max to show small differences; the figure then says so in its panel title
and colour bar (``data range 0.480-0.491``). ``vmin``/``vmax`` set the scale
by hand (named "fixed" on the colour bar).

A token grid smaller than 4x4 (:data:`SMALL_GRID`; e.g. a 64-pixel input to an
ImageNet backbone with stride 32 gives 2x2) holds too few tokens to show where
a mask looks: :func:`plot_mask_grid` warns and says so in the figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from energymask.mask_quality import SMALL_GRID  # noqa: F401  (named in the docstring)
from energymask.mask_quality import small_grid_warning as warn_small_grid

from ._common import as_image, new_axes, to_numpy, upsample
from ._common import data_range as data_range_of

__all__ = ["plot_mask_grid", "plot_keep_comparison", "plot_keep_masks", "plot_ema_masks"]

CMAP = "viridis"


def _keep_scale(values, data_range: bool, vmin, vmax) -> tuple[float, float, str]:
    """``(lo, hi, note)`` of a keep colour scale: [0, 1], the data's range or the given one.

    ``note`` is empty for [0, 1], else it says which scale is used (for titles).
    """
    if data_range:
        if vmin is not None or vmax is not None:
            raise ValueError(f"data_range=True sets the scale from the data; vmin and vmax "
                             f"must then be None, but got {vmin} and {vmax}")
        lo, hi = data_range_of(values)
        return lo, hi, f"data range {lo:.3f}-{hi:.3f}, not 0-1"
    lo, hi = data_range_of(values, 0.0 if vmin is None else vmin, 1.0 if vmax is None else vmax)
    return lo, hi, "" if (lo, hi) == (0.0, 1.0) else f"fixed scale {lo:.3g}-{hi:.3g}"


def _scale_label(what: str, note: str) -> str:
    return f"{what} ({note or '0 to 1'})"


def _class_name(v, names) -> str:
    return str(names[int(v)]) if names is not None else str(int(v))


def _labels_title(labels, predictions, i: int, names) -> tuple[str, str]:
    """``("true 3 · pred 5", colour)`` for row ``i``; red when the prediction is wrong."""
    def name(v) -> str:
        return _class_name(v, names)

    parts, colour = [], "black"
    if labels is not None:
        parts.append(f"true {name(labels[i])}")
    if predictions is not None:
        parts.append(f"pred {name(predictions[i])}")
        if labels is not None and name(labels[i]) != name(predictions[i]):
            colour = "red"
    return " · ".join(parts), colour


def _check_labels(values, batch: int, arg: str):
    if values is None:
        return None
    a = to_numpy(values).reshape(-1)
    if a.shape[0] != batch:
        raise ValueError(f"{arg} must hold one class per image ({batch}), but got {a.shape[0]}")
    return a.astype(int)


def _images_and_maps(images, maps: dict, arg: str) -> tuple[np.ndarray, dict]:
    """``images`` (N, C, H, W) and ``maps`` name -> (N, h, w) as numpy, checked."""
    imgs = to_numpy(images)
    if imgs.ndim != 4 or not maps:
        raise ValueError(f"images must be (N, C, H, W) and {arg} a non-empty dict, but got "
                         f"{imgs.shape} and {len(maps)} maps")
    n = imgs.shape[0]
    arrays = {name: to_numpy(m) for name, m in maps.items()}
    for name, m in arrays.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"{arg}[{name!r}] must be ({n}, h, w), but got {m.shape}")
    return imgs, arrays


def plot_mask_grid(images, keep_maps, object_masks=None, labels=None, predictions=None,
                   axes=None, max_rows: int = 8, vmin: float | None = None,
                   vmax: float | None = None, class_names=None, alpha: float = 0.55,
                   data_range: bool = False):
    """One row per image: image | keep map | keep map over the image | image x keep.

    The object outline (red) is drawn on the first three panels; the true and
    predicted classes head the image (red when wrong), the mean keep heads the
    keep map. One colour bar serves the three keep panels. Warns when the token
    grid is smaller than 4x4 (:func:`warn_small_grid`), and notes it under the figure.

    Args:
        images: (B, C, H, W) with C in {1, 3}, values in [0, 1].
        keep_maps: (B, h, w) keep probabilities or binary masks on the token grid
            (e.g. ``EnergyMask2d.last_keep``), upsampled to (H, W) by nearest neighbour.
        object_masks: optional (B, 1, H, W) ground-truth masks, drawn as a contour.
        labels, predictions: optional (B,) true and predicted classes.
        axes: optional (rows, 4) axes to draw into. Default: a new figure.
        max_rows: at most this many images. Default: 8.
        vmin, vmax: a fixed keep colour scale. Default: 0 and 1.
        class_names: optional names indexed by class. Default: the class numbers.
        alpha: opacity of the keep map over the image. Default: 0.55.
        data_range: colour the keep maps from the min to the max of the maps
            shown (named in the keep map's title and on the colour bar). Default: False.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 4). The masked image is the
        image times the keep map (its true brightness on the default scale); on
        another scale it is divided by the scale's top, said in its title.
    """
    imgs, keeps = to_numpy(images), to_numpy(keep_maps)
    if imgs.ndim != 4 or keeps.ndim != 3 or imgs.shape[0] != keeps.shape[0]:
        raise ValueError(f"images must be (B, C, H, W) and keep_maps (B, h, w), "
                         f"but got {imgs.shape} and {keeps.shape}")
    labels = _check_labels(labels, imgs.shape[0], "labels")
    predictions = _check_labels(predictions, imgs.shape[0], "predictions")
    rows = min(imgs.shape[0], max_rows)
    fig, ax = new_axes(rows, 4, scale=1.9, axes=axes)
    lo, hi, note = _keep_scale(keeps[:rows], data_range, vmin, vmax)
    small = warn_small_grid(keeps.shape)
    norm = Normalize(lo, hi)
    size = imgs.shape[-2:]
    for i in range(rows):
        img = as_image(imgs[i])
        keep = upsample(keeps[i], size)
        gray = img if img.ndim == 2 else img.mean(-1)
        shown = img * (keep[..., None] if img.ndim == 3 else keep) / max(hi, 1e-8)
        cmap = None if img.ndim == 3 else "gray"
        ax[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax[i, 1].imshow(keep, cmap=CMAP, norm=norm)
        ax[i, 2].imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax[i, 2].imshow(keep, cmap=CMAP, norm=norm, alpha=alpha)
        ax[i, 3].imshow(np.clip(shown, 0, 1), cmap=cmap, vmin=0, vmax=1)
        if object_masks is not None:
            obj = to_numpy(object_masks[i]).reshape(size)
            for a in ax[i, :3]:
                a.contour(obj, levels=[0.5], colors="r", linewidths=0.8)
        text, colour = _labels_title(labels, predictions, i, class_names)
        head = ("image\n" if i == 0 else "") + text
        ax[i, 0].set_title(head.strip(), fontsize=8, color=colour)
        head = "keep map" + (f" [{note}]" if note else "") + "\n" if i == 0 else ""
        ax[i, 1].set_title(head + f"mean {keep.mean():.2f}", fontsize=8,
                           color="darkred" if note and i == 0 else "black")
        if i == 0:
            ax[i, 2].set_title("keep over image", fontsize=8)
            ax[i, 3].set_title("image x keep" + (f"\n(brightness / {hi:.2f})"
                                                 if hi != 1.0 else ""), fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=list(ax.flat), shrink=min(0.5, 2.5 / rows),
                       aspect=25, location="right")
    bar.set_label(_scale_label("keep probability", note), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if small:
        fig.supxlabel(f"Warning: {small}", fontsize=7, color="darkred")
    return fig, ax


def plot_keep_comparison(images, keep_maps: dict, object_masks=None, labels=None,
                         predictions: dict | None = None, axes=None, max_rows: int = 8,
                         class_names=None):
    """One row per image: the image, then each model's keep map of it, on one [0, 1] scale.

    For comparing masks on the same images, e.g. the authors' soft ERSM keep map
    (a dimmed map) beside ours with ``gate="hard"`` (the executed binary mask).
    Every map is upsampled to the image by nearest neighbour and shares one
    colour bar on [0, 1], so a dimmed map looks dimmed and a binary one shows
    its two colours. The object outline (red) is drawn on every panel; under each
    map: the model's predicted class (red when wrong) and the map's mean keep
    ("binary" when every value is 0 or 1). Warns when a token grid is smaller
    than 4x4 (:func:`warn_small_grid`).

    Args:
        images: (B, C, H, W) with C in {1, 3}, values in [0, 1].
        keep_maps: column title -> (B, h, w) keep map on the token grid, values
            in [0, 1] (e.g. ``EnergyMask2d.last_keep`` of each model).
        object_masks: optional (B, 1, H, W) ground-truth masks, drawn as a contour.
        labels: optional (B,) true classes, over the image.
        predictions: optional column title (of ``keep_maps``) -> (B,) predicted
            classes of that model, under its map (red when wrong).
        axes: optional (rows, 1 + len(keep_maps)) axes. Default: a new figure.
        max_rows: at most this many images. Default: 8.
        class_names: optional names indexed by class. Default: the class numbers.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (rows, 1 + len(keep_maps)).
    """
    imgs, keeps = _images_and_maps(images, keep_maps, "keep_maps")
    n = imgs.shape[0]
    predictions = dict(predictions or {})
    unknown = sorted(set(predictions) - set(keeps))
    if unknown:
        raise ValueError(f"predictions must be keyed by keep_maps' titles {list(keeps)}, "
                         f"but got {unknown}")
    labels = _check_labels(labels, n, "labels")
    predictions = {name: _check_labels(p, n, f"predictions[{name!r}]")
                   for name, p in predictions.items()}
    for name, k in keeps.items():
        warn_small_grid(k.shape, f"keep map of {name}")
    rows = min(n, max_rows)
    fig, ax = new_axes(rows, 1 + len(keeps), scale=2.2, axes=axes)
    norm = Normalize(0.0, 1.0)
    size = imgs.shape[-2:]
    for i in range(rows):
        img = as_image(imgs[i])
        obj = None if object_masks is None else to_numpy(object_masks[i]).reshape(size)
        ax[i, 0].imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
        text, colour = _labels_title(labels, None, i, class_names)
        ax[i, 0].set_title((("image\n" if i == 0 else "") + text).strip(), fontsize=8,
                           color=colour)
        for j, (name, k) in enumerate(keeps.items(), start=1):
            ax[i, j].imshow(upsample(k[i], size), cmap=CMAP, norm=norm)
            binary = bool(np.isin(k[i], (0.0, 1.0)).all())
            text, colour = f"mean keep {k[i].mean():.2f}" + (", binary" if binary else ""), "black"
            if name in predictions:
                text = f"pred {_class_name(predictions[name][i], class_names)} · {text}"
                if labels is not None and labels[i] != predictions[name][i]:
                    colour = "red"
            ax[i, j].set_xlabel(text, fontsize=7, color=colour)
            if i == 0:
                ax[i, j].set_title(name, fontsize=8)
        if obj is not None:
            for a in ax[i]:
                a.contour(obj, levels=[0.5], colors="r", linewidths=0.8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=list(ax.flat), shrink=min(0.5, 2.5 / rows),
                       aspect=25, location="right")
    bar.set_label(_scale_label("keep", ""), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig, ax


def plot_keep_masks(images, masks: dict, epoch: int | None = None, axes=None,
                    data_range: bool = False):
    """One row per image: the image, then the keep map of each ERSM layer.

    Each layer's column has its own colour bar, on [0, 1] (or, with
    ``data_range=True``, that layer's min..max, named in its title), shared by
    its rows. For ``MaskLoggerCallback``.

    Args:
        images: (N, C, H, W); a 3-channel image is shown in colour, else the first
            channel in grey, each rescaled to its own min..max.
        masks: layer name -> (N, h, w) keep probabilities.
        epoch: named in the title when given.
        axes: optional (N, 1 + len(masks)) axes. Default: a new figure.
        data_range: colour each layer from its min to its max. Default: False.

    Returns:
        ``(fig, axes)``.
    """
    imgs, keeps = _images_and_maps(images, masks, "masks")
    n = imgs.shape[0]
    fig, ax = new_axes(n, 1 + len(keeps), scale=2.0, axes=axes)
    for i in range(n):
        img = imgs[i, :3] if imgs.shape[1] == 3 else imgs[i, :1]
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
        ax[i, 0].imshow(as_image(img), cmap=None if img.shape[0] == 3 else "gray")
    for j, (name, k) in enumerate(keeps.items(), start=1):
        lo, hi, note = _keep_scale(k, data_range, None, None)
        small = warn_small_grid(k.shape, f"keep map of {name}")
        norm = Normalize(lo, hi)
        for i in range(n):
            ax[i, j].imshow(k[i], cmap=CMAP, norm=norm)
            ax[i, j].set_title(f"mean {k[i].mean():.2f}", fontsize=8)
        flags = "".join(f"\n[{t}]" for t in (note, "grid below 4x4" if small else "") if t)
        ax[0, j].set_title(f"{name}{flags}\nmean {k[0].mean():.2f}", fontsize=8)
        bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=list(ax[:, j]), shrink=0.6, aspect=30)
        bar.set_label(_scale_label("keep", note), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    ax[0, 0].set_title("image", fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("ERSM keep maps" + (f", epoch {epoch}" if epoch is not None else ""))
    return fig, ax


def plot_ema_masks(ema, layer: str | None = None, p: float | None = None, dropped=None,
                   axes=None, ncols: int = 8, max_channels: int = 64,
                   vmin: float | None = None, vmax: float | None = None,
                   data_range: bool = False):
    """PB-EDropout keep frequency (EMA of the chosen masks), one panel per channel.

    Args:
        ema: (C, h, w) EMA of the chosen masks, values in [0, 1].
        layer, p: named in the title when given.
        dropped: optional (C, h, w) patches the deterministic masks drop (1 = dropped),
            marked with a white cross.
        axes: optional axes (rows * ncols of them). Default: a new figure.
        ncols: panels per row. Default: 8.
        max_channels: at most this many channels. Default: 64.
        vmin, vmax: a fixed colour scale. Default: 0 and 1.
        data_range: colour from the min to the max of the channels shown (named
            in the title). Default: False.

    Returns:
        ``(fig, axes)``; unused panels are hidden.
    """
    e = to_numpy(ema)
    if e.ndim != 3:
        raise ValueError(f"ema must be (C, h, w), but got {e.shape}")
    d = None if dropped is None else to_numpy(dropped)
    if d is not None and d.shape != e.shape:
        raise ValueError(f"dropped must have the shape of ema {e.shape}, but got {d.shape}")
    c = min(e.shape[0], max_channels)
    ncols = min(ncols, c)
    rows = int(np.ceil(c / ncols))
    fig, ax = new_axes(rows, ncols, scale=1.3, axes=axes)
    lo, hi, note = _keep_scale(e[:c], data_range, vmin, vmax)
    norm = Normalize(lo, hi)
    for k, a in enumerate(ax.flat):
        a.set_xticks([])
        a.set_yticks([])
        if k >= c:
            a.set_visible(False)
            continue
        a.imshow(e[k], cmap=CMAP, norm=norm)
        if d is not None:
            r, q = np.nonzero(d[k] > 0.5)
            a.scatter(q, r, marker="x", color="white", s=14, linewidths=1.0)
        a.set_title(f"ch {k}", fontsize=7)
    bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=list(ax.flat), shrink=0.8, aspect=30)
    bar.set_label(_scale_label("keep frequency", note), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    title = "PB-EDropout keep frequency (EMA of the masks)"
    if layer is not None:
        title += f" at {layer}"
    if p is not None:
        title += f", p = {p:g}"
    if d is not None:
        title += "; x = dropped by the deterministic mask"
    if note:
        title += f" [{note}]"
    fig.suptitle(title, fontsize=10)
    return fig, ax
