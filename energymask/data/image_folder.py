"""Any image-folder tree, one class per sub-folder, read with Pillow. No download.

Expected layout::

    root/
        class_a/  img1.png  img2.jpg ...
        class_b/  ...

Classes are the sub-folders in sorted order. At scan time every file with an image
extension is opened and verified; a file Pillow cannot read is skipped with a
``UserWarning`` naming it (so one corrupt file does not stop training).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from energymask.data._split import split_dataset

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "image_folder_splits"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = "root/<class name>/<image file> (one sub-folder per class, images read by Pillow)"


class ImageFolder(Dataset):
    """Images from a class-per-sub-folder tree.

    Items are ``(image (C, H, W) float32 in [0, 1], label int64)``.

    Args:
        root: the tree's root folder.
        size: resize every image to ``(H, W)`` (bilinear) so batches stack. Default: None.
        mode: Pillow mode, ``"RGB"`` (C = 3) or ``"L"`` (C = 1). Default: "RGB".
        transform: callable on the float tensor. Default: None.

    Attributes:
        classes: class names; ``samples``: list of ``(path, label)``.
    """

    def __init__(self, root: str | Path, size: tuple[int, int] | None = None,
                 mode: str = "RGB", transform=None) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', but got {mode!r}")
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root must be a folder laid out as {LAYOUT}, "
                             f"but {str(root)!r} is not a folder")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"root must be laid out as {LAYOUT}, "
                             f"but {str(root)!r} has no class sub-folders")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for path in sorted((root / name).iterdir()):
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                try:
                    with Image.open(path) as im:
                        im.verify()
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
                    warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
                    continue
                self.samples.append((path, label))
        if not self.samples:
            raise ValueError(f"root must be laid out as {LAYOUT}, "
                             f"but {str(root)!r} holds no readable image")
        self.size = size
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[i]
        with Image.open(path) as im:
            im = im.convert(self.mode)
            if self.size is not None:
                im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(label, dtype=torch.int64)


def image_folder_splits(root: str | Path, val_fraction: float = 0.1,
                        test_fraction: float = 0.1, seed: int = 0,
                        **kwargs) -> dict[str, Dataset]:
    """``{"train", "val", "test"}`` seeded disjoint subsets of one tree (``kwargs`` go to
    :class:`ImageFolder`)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 with a sum below 1, "
                         f"but got {val_fraction} and {test_fraction}")
    ds = ImageFolder(root, **kwargs)
    val, test, train = split_dataset(
        ds, (val_fraction, test_fraction, 1.0 - val_fraction - test_fraction), seed)
    return {"train": train, "val": val, "test": test}
