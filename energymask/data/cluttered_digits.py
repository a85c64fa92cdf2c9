"""Cluttered digits: real handwritten digits on a cluttered canvas, with object masks.

The source digits are the UCI optical digits as shipped by scikit-learn
(``sklearn.datasets.load_digits``: 1797 images, 8x8, values 0..16; no download).
Each sample scales one source digit up (bilinear) to a random size, places it at a
random position on a larger canvas and adds clutter: small crops of *other* digits
of the same split, dimmer, placed outside the digit's box. The ground-truth object
mask is the placed digit's pixels above ``mask_threshold``.

Splits never share a source image: the 1797 sources are split first, and a split's
samples and clutter come only from its own sources.

Spurious variant (``spurious=True``): every image gets a faint background grating
whose orientation type (0..9) equals the label with probability
``spurious_strength`` (else uniform) in train and val, and is uniform, independent of
the label, in test. A model that relies on the background loses accuracy in test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ClutteredDigits", "generate_cluttered_digits", "load_source_digits", "make_splits"]

NUM_CLASSES = 10


class ClutteredDigits(Dataset):
    """A generated cluttered-digits split held in memory.

    Items are ``(image (1, H, W) float32 in [0, 1], label int64, object_mask (1, H, W)
    float32 in {0, 1})``.

    Attributes:
        images: (N, 1, H, W) float32.
        labels: (N,) int64.
        object_masks: (N, 1, H, W) float32.
        source_index: (N,) int64, index of the source digit in ``load_digits()``.
        boxes: (N, 4) int64, the digit's box ``(top, left, height, width)``.
        background: (N,) int64, background type in 0..9, or -1 with no background.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        object_masks: Tensor,
        source_index: Tensor,
        boxes: Tensor,
        background: Tensor,
    ) -> None:
        n = images.shape[0]
        for name, t in [("labels", labels), ("object_masks", object_masks),
                        ("source_index", source_index), ("boxes", boxes),
                        ("background", background)]:
            if t.shape[0] != n:
                raise ValueError(f"{name} must have {n} rows like images, but got {t.shape[0]}")
        self.images = images
        self.labels = labels
        self.object_masks = object_masks
        self.source_index = source_index
        self.boxes = boxes
        self.background = background

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[i], self.labels[i], self.object_masks[i]


def load_source_digits() -> tuple[Tensor, Tensor]:
    """The 1797 scikit-learn digits as ``(images (N, 8, 8) float32 in [0, 1], labels (N,))``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32) / 16.0
    return images, torch.as_tensor(d.target, dtype=torch.int64)


def _gratings(canvas: int, amplitude: float) -> Tensor:
    """Ten faint sinusoidal gratings (10, canvas, canvas), orientation k * 18 degrees."""
    yy, xx = torch.meshgrid(torch.arange(canvas, dtype=torch.float32),
                            torch.arange(canvas, dtype=torch.float32), indexing="ij")
    out = []
    for k in range(NUM_CLASSES):
        theta = math.pi * k / NUM_CLASSES
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / 8.0)
        out.append(amplitude * 0.5 * (1 + torch.sin(phase)))
    return torch.stack(out)


def generate_cluttered_digits(
    sources: Tensor,
    source_labels: Tensor,
    num_samples: int,
    canvas: int = 64,
    digit_size: tuple[int, int] = (20, 28),
    num_clutter: int = 4,
    clutter_size: int = 10,
    clutter_intensity: float = 0.5,
    mask_threshold: float = 0.3,
    background: str = "none",
    spurious_strength: float = 0.9,
    background_amplitude: float = 0.2,
    source_ids: Tensor | None = None,
    seed: int = 0,
) -> ClutteredDigits:
    """Generate ``num_samples`` cluttered images from ``sources`` (N, 8, 8) in [0, 1].

    Args:
        sources: (N, 8, 8) source digits, N >= 2 (clutter comes from other digits).
        source_labels: (N,) labels.
        num_samples: number of images to make.
        canvas: canvas side. Default: 64.
        digit_size: inclusive range of the scaled digit side. Default: (20, 28).
        num_clutter: clutter fragments per image (placed outside the digit box;
            a fragment that finds no room after a few tries is skipped). Default: 4.
        clutter_size: side of a fragment, cropped from another digit at the middle
            digit size. Default: 10.
        clutter_intensity: fragments are multiplied by this. Default: 0.5.
        mask_threshold: a digit pixel is on the object if above this. Default: 0.3.
        background: ``"none"``, ``"correlated"`` (type = label with probability
            ``spurious_strength``, else uniform) or ``"shuffled"`` (uniform). Default: none.
        spurious_strength: see ``background``. Default: 0.9.
        background_amplitude: peak value of the background grating. Default: 0.2.
        source_ids: (N,) ids recorded in ``source_index``. Default: ``arange(N)``.
        seed: generator seed.
    """
    lo, hi = digit_size
    if not 1 <= lo <= hi <= canvas:
        raise ValueError(f"digit_size must satisfy 1 <= lo <= hi <= canvas={canvas}, "
                         f"but got {digit_size}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, but got {num_samples}")
    if sources.ndim != 3 or sources.shape[0] < 2:
        raise ValueError(f"sources must be (N >= 2, h, w), but got {tuple(sources.shape)}")
    if background not in ("none", "correlated", "shuffled"):
        raise ValueError("background must be one of 'none', 'correlated', 'shuffled', "
                         f"but got {background!r}")
    if not 0.0 <= spurious_strength <= 1.0:
        raise ValueError(f"spurious_strength must be in [0, 1], but got {spurious_strength}")
    if not 0 < clutter_size <= lo:
        raise ValueError(f"clutter_size must be in (0, {lo}], but got {clutter_size}")
    if not 0.0 <= mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), but got {mask_threshold}")
    for name, value in (("clutter_intensity", clutter_intensity),
                        ("background_amplitude", background_amplitude)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite float >= 0 (no NaN or Inf), "
                             f"but got {value}")

    g = torch.Generator().manual_seed(seed)
    n_src = sources.shape[0]
    ids = torch.arange(n_src) if source_ids is None else source_ids
    # Every source at every size, once: (num_sizes, N, s, s) as a list.
    sizes = list(range(lo, hi + 1))
    scaled = {s: F.interpolate(sources[:, None], size=(s, s), mode="bilinear",
                               align_corners=False)[:, 0].clamp(0, 1) for s in sizes}
    mid = sizes[len(sizes) // 2]

    src = torch.randint(n_src, (num_samples,), generator=g)
    size = torch.randint(lo, hi + 1, (num_samples,), generator=g)
    top = (torch.rand(num_samples, generator=g) * (canvas - size + 1)).long()
    left = (torch.rand(num_samples, generator=g) * (canvas - size + 1)).long()
    labels = source_labels[src].clone()

    images = torch.zeros(num_samples, 1, canvas, canvas)
    bg = torch.full((num_samples,), -1, dtype=torch.int64)
    if background != "none":
        bg = torch.randint(NUM_CLASSES, (num_samples,), generator=g)
        if background == "correlated":
            follow = torch.rand(num_samples, generator=g) < spurious_strength
            bg = torch.where(follow, labels, bg)
        images[:, 0] = _gratings(canvas, background_amplitude)[bg]

    # Clutter: random crops of other sources, outside the digit box.
    tries = 4
    cs = clutter_size
    shift = torch.randint(1, n_src, (num_samples, num_clutter), generator=g)
    other = (src[:, None] + shift) % n_src
    crop_y = torch.randint(mid - cs + 1, (num_samples, num_clutter), generator=g)
    crop_x = torch.randint(mid - cs + 1, (num_samples, num_clutter), generator=g)
    pos = torch.randint(canvas - cs + 1, (num_samples, num_clutter, tries, 2), generator=g)

    digits = torch.zeros(num_samples, canvas, canvas)
    for i in range(num_samples):
        t, l, s = int(top[i]), int(left[i]), int(size[i])
        for j in range(num_clutter):
            for k in range(tries):
                py, px = int(pos[i, j, k, 0]), int(pos[i, j, k, 1])
                if py + cs <= t or py >= t + s or px + cs <= l or px >= l + s:
                    cy, cx = int(crop_y[i, j]), int(crop_x[i, j])
                    frag = scaled[mid][int(other[i, j]), cy:cy + cs, cx:cx + cs]
                    region = images[i, 0, py:py + cs, px:px + cs]
                    torch.maximum(region, clutter_intensity * frag, out=region)
                    break
        digits[i, t:t + s, l:l + s] = scaled[s][int(src[i])]
    images[:, 0] = torch.maximum(images[:, 0], digits)
    masks = (digits > mask_threshold).float()[:, None]
    boxes = torch.stack([top, left, size, size], dim=1)
    return ClutteredDigits(images.contiguous(), labels, masks, ids[src].clone(), boxes, bg)


def make_splits(
    num_train: int = 5000,
    num_val: int = 1000,
    num_test: int = 1000,
    source_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    spurious: bool = False,
    spurious_strength: float = 0.9,
    seed: int = 0,
    **kwargs,
) -> dict[str, ClutteredDigits]:
    """Deterministic train / val / test splits with disjoint source digits.

    The 1797 source digits are permuted with ``seed`` and cut by ``source_fractions``;
    each split is generated from its own sources only (see
    :func:`generate_cluttered_digits` for ``kwargs``). With ``spurious=True`` train and
    val get class-correlated backgrounds (``spurious_strength``), test shuffled ones.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``.
    """
    if len(source_fractions) != 3 or any(f <= 0 for f in source_fractions):
        raise ValueError(f"source_fractions must be three positive numbers, "
                         f"but got {source_fractions}")
    images, labels = load_source_digits()
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    total = sum(source_fractions)
    n_train = int(n * source_fractions[0] / total)
    n_val = int(n * source_fractions[1] / total)
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
             "test": perm[n_train + n_val:]}
    counts = {"train": num_train, "val": num_val, "test": num_test}
    modes = {"train": "correlated", "val": "correlated", "test": "shuffled"}
    out = {}
    for k, (name, idx) in enumerate(parts.items()):
        out[name] = generate_cluttered_digits(
            images[idx], labels[idx], counts[name],
            background=modes[name] if spurious else "none",
            spurious_strength=spurious_strength, source_ids=idx,
            seed=seed * 1000 + k + 1, **kwargs)
    return out
