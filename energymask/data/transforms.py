"""Image format of a dataset's items: channels, size, normalisation, and the batch format.

:class:`ImageTransform` maps an image ``(C, H, W)`` in [0, 1] to the channels and
size a backbone expects (e.g. ``ImageTransform(channels=3, size=224,
normalize=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))`` for ImageNet
models); :class:`Formatted` applies it to a dataset's items ``(x, y)`` or
``(x, y, object_mask)`` and keeps or drops the mask, so batches unpack as
``x, y = batch`` by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["Formatted", "ImageTransform"]

# ITU-R BT.601 luma weights (Pillow's "L" conversion uses the same).
_LUMA = (0.299, 0.587, 0.114)


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                 for s in pair):
        raise ValueError(f"size must be a positive int or a pair (H, W) of them, but got {size!r}")
    return pair


class ImageTransform:
    """Channels, then size, then normalisation, of an image ``(C, H, W)`` in [0, 1].

    Args:
        channels: 1 or 3; a grey image becomes 3 equal channels, an RGB image its
            luma (BT.601). None keeps the channels. Default: None.
        size: int (square) or ``(H, W)``; bilinear resize, antialiased when
            shrinking. Object masks are resized with nearest neighbour. Default: None.
        normalize: ``(mean, std)``, each a float or one float per channel:
            ``(x - mean) / std``. Default: None.
    """

    def __init__(self, channels: int | None = None, size: int | Sequence[int] | None = None,
                 normalize: tuple | None = None) -> None:
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, but got {channels!r}")
        self.channels, self.size = channels, _size(size)
        self.mean = self.std = None
        if normalize is not None:
            if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
                raise ValueError(f"normalize must be (mean, std), but got {normalize!r}")
            mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1)
                         for v in normalize)
            if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
                raise ValueError(f"normalize must be finite (no NaN or Inf), but got {normalize!r}")
            if (std <= 0).any():
                raise ValueError(f"normalize's std must be > 0, but got {normalize[1]!r}")
            if channels is not None and max(len(mean), len(std)) not in (1, channels):
                raise ValueError(f"normalize needs 1 or {channels} values for mean and std, "
                                 f"but got {normalize!r}")
            self.mean, self.std = mean, std

    def __call__(self, x: Tensor) -> Tensor:
        if self.channels == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif self.channels == 1 and x.shape[0] == 3:
            x = (torch.tensor(_LUMA, dtype=x.dtype).reshape(3, 1, 1) * x).sum(0, keepdim=True)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            shrink = math.prod(self.size) < math.prod(x.shape[-2:])
            x = F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False,
                              antialias=shrink)[0]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def mask(self, m: Tensor) -> Tensor:
        """An object mask ``(1, H, W)`` resized like the image (nearest)."""
        if self.size is None or tuple(m.shape[-2:]) == self.size:
            return m
        return F.interpolate(m[None], size=self.size, mode="nearest")[0]

    def __repr__(self) -> str:
        norm = None if self.mean is None else (self.mean.flatten().tolist(),
                                               self.std.flatten().tolist())
        return f"ImageTransform(channels={self.channels}, size={self.size}, normalize={norm})"


class Formatted(Dataset):
    """``dataset``'s items in the format a model trains on.

    Items of ``dataset`` are ``(x, y)`` or ``(x, y, object_mask)``; items here are
    ``(transform(image(x)), y)``, or with ``with_masks=True`` ``(..., y, mask)``
    with the mask resized like the image by ``image`` (a geometric ``transform``
    of your own does not move the mask).

    Args:
        dataset: the items.
        image: an :class:`ImageTransform` (channels, size, normalisation). Default: None.
        transform: your callable on the image, after ``image``. Default: None.
        with_masks: keep the object mask as the third item. Default: False.
    """

    def __init__(self, dataset: Dataset, image: ImageTransform | None = None,
                 transform: Callable[[Tensor], Tensor] | None = None,
                 with_masks: bool = False) -> None:
        self.dataset, self.image, self.transform = dataset, image, transform
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        x, y, *rest = self.dataset[i]
        if self.image is not None:
            x = self.image(x)
        if self.transform is not None:
            x = self.transform(x)
        if not self.with_masks:
            return x, y
        if not rest:
            raise ValueError(f"with_masks=True needs items (x, y, object_mask), but "
                             f"{type(self.dataset).__name__} gives (x, y)")
        return x, y, rest[0] if self.image is None else self.image.mask(rest[0])
