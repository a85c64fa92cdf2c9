"""Any image-folder tree, one class per sub-folder, read with Pillow. No download.

Expected layout (as CUB-200 or Oxford Pets sorted into class folders)::

    root/                          or     root/
        class_a/  img1.png ...                train/  class_a/ ...  class_b/ ...
        class_b/  ...                         test/   class_a/ ...  class_b/ ...

Classes are the sub-folders in sorted order. Images are decoded lazily, when an
item is read (in the DataLoader's workers with ``num_workers > 0``); the scan only
opens each file's header (Pillow reads the format and size, not the pixels), so a
folder of CUB's 11,788 images is listed in seconds, not decoded up front
(``scan="decode"`` decodes everything at scan, the old behaviour; measured in
``benchmarks/bench_image_folder.py``). A file Pillow cannot identify is found at
scan: by default the scan raises a ``ValueError`` listing every such file and
why; with ``bad_images="skip"`` they are left out, listed in a ``UserWarning``
and in ``ImageFolder.skipped``. A file whose header is fine but whose pixels are
not (a truncated JPEG or PNG) is found when it is first read: ``"raise"`` raises
a ``ValueError`` naming the file; ``"skip"`` warns once, naming it, and gives
the next readable image in the folder's order instead (deterministic, so an
exact resume still sees the same batches). A class folder without images is
refused. 16-bit images (Pillow modes ``I;16*`` and ``I``) are scaled by 65535,
8-bit ones by 255.
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
           "image_folder_splits", "read_header", "split_folders"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = ("root/<class name>/<image file>, or root/train/<class name>/... and "
          "root/test/<class name>/... (one sub-folder per class, images read by Pillow)")
BAD_IMAGES = ("raise", "skip")
SCANS = ("header", "decode")
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


def read_header(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header; raises when Pillow cannot identify it.

    Reads no pixels: a file truncated after its header passes (found by :func:`decode`).
    """
    with Image.open(path) as im:
        return im.size


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
        bad_images: ``"raise"`` (a ``ValueError`` naming the files Pillow cannot
            read: at scan all of them, at decoding the one met) or ``"skip"`` (leave
            them out with a warning; at decoding, the next readable image is given
            instead). Default: "raise".
        scan: ``"header"`` (read each file's header only; pixels are decoded when
            an item is read) or ``"decode"`` (decode every image at scan, so every
            bad file is found before training; slow on large folders).
            Default: "header".
        progress: a progress bar over the scan: True, False or None (when stderr
            is a terminal and the scan takes over 2 s). Default: None.

    Attributes:
        classes: class names; ``samples``: list of ``(path, label)``;
        ``skipped``: list of ``(path, reason)`` left out (at decoding: those met
        in this process; DataLoader workers keep their own).
    """

    def __init__(self, root: str | Path, size: tuple[int, int] | None = None,
                 mode: str = "RGB", transform=None, bad_images: str = "raise",
                 scan: str = "header", progress: bool | None = None) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', but got {mode!r}")
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGES}, but got {bad_images!r}")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, but got {scan!r}")
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root must be a folder laid out as {LAYOUT}, "
                             f"but {str(root)!r} is not a folder")
        folders = class_folders(root)
        self.classes = [f.name for f in folders]
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        files = [(path, label) for label, folder in enumerate(folders)
                 for path in _image_files(folder)]
        check = read_header if scan == "header" else (lambda path: decode(path, mode))
        from energymask.evaluation import progress_bar  # tqdm only when a bar is drawn

        with progress_bar(len(files), f"scanning {root.name}", progress) as bar:
            for path, label in files:
                try:
                    check(path)
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
                    self.skipped.append((path, f"{type(e).__name__}: {e}"))
                else:
                    self.samples.append((path, label))
                bar.update(1)
        if self.skipped:
            listed = "; ".join(f"{p} ({why})" for p, why in self.skipped[:SHOWN])
            more = f" and {len(self.skipped) - SHOWN} more" if len(self.skipped) > SHOWN else ""
            if bad_images == "raise":
                raise ValueError(f"{len(self.skipped)} image(s) under {str(root)!r} cannot be "
                                 f"decoded: {listed}{more}; fix or remove them, or pass "
                                 "bad_images='skip' (command line: --bad-images skip)")
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
        self.bad_images = bad_images
        self.scan = scan

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, i: int) -> tuple[Tensor, int]:
        """Item ``i``'s pixels (C, H, W) and label; a bad file raises or is replaced by the
        next readable one (``bad_images``)."""
        for k in range(len(self.samples)):
            path, label = self.samples[(i + k) % len(self.samples)]
            try:
                return torch.from_numpy(decode(path, self.mode)).permute(2, 0, 1), label
            except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
                why = f"{type(e).__name__}: {e}"
                if self.bad_images == "raise":
                    found = ("it was readable when the folder was scanned"
                             if self.scan == "decode" else
                             "the scan reads headers only, so a file truncated after its "
                             "header is found here")
                    raise ValueError(f"image {path} cannot be decoded ({why}); {found}. Fix "
                                     "or remove it, or pass bad_images='skip' (command line: "
                                     "--bad-images skip)") from e
                if all(p != path for p, _ in self.skipped):
                    self.skipped.append((path, why))
                    warnings.warn(f"skipping image {path} that cannot be decoded ({why}); "
                                  "the next readable image is used in its place", stacklevel=3)
        raise ValueError(f"no image under the folder can be decoded; the last tried: {path}")

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, label = self._decode(i)
        x = x.contiguous()
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
