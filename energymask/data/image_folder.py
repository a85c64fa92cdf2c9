"""Any image-folder tree, one class per sub-folder, read with Pillow. No download.

Expected layout (as CUB-200 or Oxford Pets sorted into class folders)::

    root/                          or     root/
        class_a/  img1.png ...                train/  class_a/ ...  class_b/ ...
        class_b/  ...                         test/   class_a/ ...  class_b/ ...

Classes are the sub-folders in sorted order. Every file with an image extension
is fully decoded at scan time, so a truncated or corrupt file is found before
training starts, never in the middle of it: by default the scan raises a
``ValueError`` listing every bad file and why; with ``bad_images="skip"`` they are
left out, listed in a ``UserWarning`` and in ``ImageFolder.skipped``. A class
folder without images is refused. 16-bit images (Pillow modes ``I;16*`` and
``I``) are scaled by 65535, 8-bit ones by 255.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from energymask.data._split import named_splits

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "check_fractions", "class_folders", "decode",
           "image_folder_splits", "split_folders"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = ("root/<class name>/<image file>, or root/train/<class name>/... and "
          "root/test/<class name>/... (one sub-folder per class, images read by Pillow)")
BAD_IMAGES = ("raise", "skip")
SHOWN = 10  # bad files named in one message


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """``ValueError`` unless both shares are in [0, 1) with a sum below 1 (NaN refused)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be >= 0 with a sum below 1, "
                         f"but got {val_fraction} and {test_fraction}")


def split_folders(root: str | Path) -> dict[str, Path]:
    """``{"train": root/train, "test": root/test}`` when both exist, else ``{"all": root}``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be a folder laid out as {LAYOUT}, "
                         f"but {str(root)!r} is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": root / "train", "test": root / "test"}
    return {"all": root}


def class_folders(folder: str | Path) -> list[Path]:
    """The class sub-folders of ``folder``, sorted; each must hold an image file."""
    folder = Path(folder)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"root must be laid out as {LAYOUT}, "
                         f"but {str(folder)!r} has no class sub-folders")
    empty = [str(c) for c in classes if not _image_files(c)]
    if empty:
        raise ValueError(f"class folders must hold images ({', '.join(IMAGE_EXTENSIONS)}), "
                         f"but {empty} hold none")
    return classes


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]


def decode(path: Path, mode: str = "RGB") -> np.ndarray:
    """The image at ``path`` as float32 (H, W, C) in [0, 1], C = 3 (``"RGB"``) or 1 (``"L"``).

    Decodes the whole file (a truncated one raises). 16-bit grey images are
    scaled by 65535 instead of being clipped to 8 bits.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16") or im.mode == "I":
            grey = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
            return np.repeat(grey[..., None], 3 if mode == "RGB" else 1, axis=-1)
        x = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    return x[..., None] if x.ndim == 2 else x


class ImageFolder(Dataset):
    """Images from a class-per-sub-folder tree.

    Items are ``(image (C, H, W) float32 in [0, 1], label int64)``.

    Args:
        root: the tree's root folder (one sub-folder per class).
        size: resize every image to ``(H, W)`` (bilinear, antialiased) so batches
            stack. Default: None.
        mode: ``"RGB"`` (C = 3) or ``"L"`` (C = 1). Default: "RGB".
        transform: callable on the float tensor. Default: None.
        bad_images: ``"raise"`` (a ``ValueError`` listing the files Pillow cannot
            decode) or ``"skip"`` (leave them out with a warning). Default: "raise".

    Attributes:
        classes: class names; ``samples``: list of ``(path, label)``;
        ``skipped``: list of ``(path, reason)`` left out.
    """

    def __init__(self, root: str | Path, size: tuple[int, int] | None = None,
                 mode: str = "RGB", transform=None, bad_images: str = "raise") -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', but got {mode!r}")
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGES}, but got {bad_images!r}")
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root must be a folder laid out as {LAYOUT}, "
                             f"but {str(root)!r} is not a folder")
        folders = class_folders(root)
        self.classes = [f.name for f in folders]
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        for label, folder in enumerate(folders):
            for path in _image_files(folder):
                try:
                    decode(path, mode)
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
                    self.skipped.append((path, f"{type(e).__name__}: {e}"))
                    continue
                self.samples.append((path, label))
        if self.skipped:
            listed = "; ".join(f"{p} ({why})" for p, why in self.skipped[:SHOWN])
            more = f" and {len(self.skipped) - SHOWN} more" if len(self.skipped) > SHOWN else ""
            if bad_images == "raise":
                raise ValueError(f"{len(self.skipped)} image(s) under {str(root)!r} cannot be "
                                 f"decoded: {listed}{more}; fix or remove them, or pass "
                                 "bad_images='skip'")
            warnings.warn(f"skipping {len(self.skipped)} image(s) that cannot be decoded: "
                          f"{listed}{more}", stacklevel=2)
        left = {label for _, label in self.samples}
        empty = [str(f) for label, f in enumerate(folders) if label not in left]
        if empty:
            raise ValueError(f"class folders must hold readable images, but {empty} hold "
                             "none once the bad ones are skipped")
        self.size = size
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[i]
        try:
            x = torch.from_numpy(decode(path, self.mode)).permute(2, 0, 1).contiguous()
        except Exception as e:  # noqa: BLE001 - changed since the scan
            raise ValueError(f"image {path} can no longer be decoded ({type(e).__name__}: "
                             f"{e}); it was readable when the folder was scanned") from e
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x[None], size=tuple(self.size), mode="bilinear",
                              align_corners=False, antialias=True)[0].clamp(0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(label, dtype=torch.int64)


def image_folder_splits(root: str | Path, val_fraction: float = 0.1,
                        test_fraction: float = 0.1, seed: int = 0,
                        **kwargs) -> dict[str, Dataset | None]:
    """``{"train", "val", "test"}`` from a tree (``kwargs`` go to :class:`ImageFolder`).

    One tree: seeded disjoint subsets by ``val_fraction`` and ``test_fraction``.
    ``root/train`` + ``root/test``: those are the train and test splits
    (``test_fraction`` is not used; both must have the same classes) and val is
    ``val_fraction`` of train. A split with fraction 0 is None; one asked for
    that would be empty raises ``ValueError``.
    """
    check_fractions(val_fraction, test_fraction)
    folders = split_folders(root)
    if "all" in folders:
        ds = ImageFolder(folders["all"], **kwargs)
        return named_splits(ds, {"val": val_fraction, "test": test_fraction,
                                 "train": 1.0 - val_fraction - test_fraction}, seed,
                            f"image folder {str(root)!r}")
    train, test = ImageFolder(folders["train"], **kwargs), ImageFolder(folders["test"], **kwargs)
    if train.classes != test.classes:
        raise ValueError(f"{folders['train']} and {folders['test']} must have the same class "
                         f"folders, but got {train.classes} and {test.classes}")
    out = named_splits(train, {"val": val_fraction, "train": 1.0 - val_fraction}, seed,
                       f"image folder {str(folders['train'])!r}")
    return {**out, "test": test}
