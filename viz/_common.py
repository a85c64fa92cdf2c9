"""Small helpers shared by the figures: array conversion and figure creation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure


def to_numpy(x) -> np.ndarray:
    """A tensor or array as a float numpy array (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def as_image(x) -> np.ndarray:
    """(H, W), (1, H, W) or (3, H, W) as something ``imshow`` draws: (H, W) or (H, W, 3)."""
    a = to_numpy(x)
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3 and a.shape[0] == 3:
        return np.clip(a.transpose(1, 2, 0), 0, 1)
    if a.ndim == 2:
        return a
    raise ValueError(f"image must be (H, W), (1, H, W) or (3, H, W), but got {a.shape}")


def upsample(keep, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized to ``size`` by nearest neighbour (token grid to pixels)."""
    t = torch.as_tensor(to_numpy(keep))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy()


def new_axes(nrows: int, ncols: int, scale: float = 2.0, axes=None):
    """``(fig, axes (nrows, ncols) array)``; given ``axes`` must hold nrows * ncols axes."""
    if axes is None:
        fig = Figure(figsize=(scale * ncols, scale * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes
    arr = np.asarray(axes, dtype=object).reshape(-1)
    if arr.size != nrows * ncols:
        raise ValueError(f"axes must hold {nrows * ncols} axes, but got {arr.size}")
    return arr[0].figure, arr.reshape(nrows, ncols)


def data_range(values, vmin: float | None = None, vmax: float | None = None
               ) -> tuple[float, float]:
    """``(vmin, vmax)`` of a colour scale: the finite min / max of ``values`` where not given.

    A constant map gets a small symmetric margin so that the colour bar still has a range.
    """
    a = to_numpy(values)
    a = a[np.isfinite(a)]
    lo = float(a.min()) if vmin is None and a.size else (0.0 if vmin is None else float(vmin))
    hi = float(a.max()) if vmax is None and a.size else (1.0 if vmax is None else float(vmax))
    if not lo < hi:
        margin = max(abs(lo), 1.0) * 1e-3
        lo, hi = lo - margin, hi + margin
    return lo, hi


#: (marker, line style) per curve, so overlapping curves stay distinguishable in
#: colour, in grey print and where they lie on top of each other (markers shrink).
STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"),
          ("X", "-."), ("*", ":"))


def style(i: int) -> dict:
    """Line keywords of the i-th curve: marker, line style and a marker size that shrinks."""
    marker, line = STYLES[i % len(STYLES)]
    return {"marker": marker, "linestyle": line, "markersize": max(7.0 - 1.2 * i, 3.0)}


def reference_lines(ax, clean: float | None = None, chance: float | None = None) -> None:
    """Horizontal clean-accuracy (dashed black) and chance (dotted grey) lines, labelled."""
    if clean is not None:
        ax.axhline(float(clean), color="black", linestyle="--", linewidth=1.0,
                   label=f"clean accuracy {float(clean):.3f}")
    if chance is not None:
        ax.axhline(float(chance), color="grey", linestyle=":", linewidth=1.2,
                   label=f"chance {float(chance):.2f}")
