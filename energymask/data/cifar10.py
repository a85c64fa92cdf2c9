"""CIFAR-10 from its local python-pickle folder (``cifar-10-batches-py``). No download.

Expected layout::

    root/                      (the ``cifar-10-batches-py`` folder itself)
        data_batch_1 ... data_batch_5
        test_batch
        batches.meta           (optional: class names)

Each batch is a pickle dict with ``b"data"`` (N, 3072) uint8 and ``b"labels"``
(ints in 0..9). The pickles are read by a restricted unpickler that builds only
what the format uses (dicts, lists, bytes, str, ints, NumPy arrays): a file
that asks for any other type or function is refused, so a malicious file runs
no code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from energymask.data._split import named_splits

__all__ = ["CIFAR10Pickles", "cifar10_splits", "load_cifar10"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
LAYOUT = ("a 'cifar-10-batches-py' folder holding data_batch_1 .. data_batch_5, test_batch "
          "and batches.meta (python pickles)")


# The only globals a CIFAR-10 pickle needs: NumPy's array (and scalar) rebuilders, under
# their NumPy 1 and 2 module names, and _codecs.encode (bytes in protocol-2 pickles).
ALLOWED_GLOBALS = frozenset({
    *((m, name) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _Unpickler(pickle.Unpickler):
    """Refuses every global outside :data:`ALLOWED_GLOBALS` (no code runs)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"it asks for {module}.{name}, which a CIFAR-10 batch never holds "
                "(refused: only dicts, lists, bytes, str, ints and NumPy arrays are allowed)")
        return super().find_class(module, name)


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _Unpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unreadable file is a layout error
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {e}; expected {LAYOUT}") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR-10 batch {path} must hold a dict, but holds a "
                         f"{type(d).__name__}")
    return d


def _labels(path: Path, labels) -> np.ndarray:
    """``labels`` as int64, checked to be integers in 0..9."""
    try:
        out = np.asarray(labels)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: b'labels' must be a list of ints in 0..9 ({e})") from e
    if out.ndim != 1 or not (out.dtype.kind in "iu" or out.size == 0):
        raise ValueError(f"{path}: b'labels' must be a list of ints in 0..9, but got "
                         f"{out.dtype} with shape {out.shape}")
    bad = np.flatnonzero((out < 0) | (out > 9))
    if bad.size:
        raise ValueError(f"{path}: b'labels' must be in 0..9, but label {int(out[bad[0]])} "
                         f"at row {int(bad[0])} is not ({bad.size} such labels)")
    return out.astype(np.int64)


def load_cifar10(root: str | Path, train: bool = True) -> tuple[Tensor, Tensor, list[str]]:
    """Read the pickles: ``(images (N, 3, 32, 32) uint8, labels (N,) int64, class names)``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be {LAYOUT}, but {str(root)!r} is not a folder")
    files = TRAIN_FILES if train else TEST_FILES
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise ValueError(f"root must be {LAYOUT}, but {str(root)!r} lacks {missing}")
    data, labels = [], []
    for name in files:
        d = _read(root / name)
        if b"data" not in d or b"labels" not in d:
            raise ValueError(f"{root / name} must hold b'data' and b'labels', "
                             f"but has keys {sorted(d)}")
        x, y = d[b"data"], _labels(root / name, d[b"labels"])
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
            raise ValueError(f"{root / name}: b'data' must be a uint8 NumPy array, but got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != len(y):
            raise ValueError(f"{root / name}: b'data' must be (N, 3072) with N labels, "
                             f"but got {x.shape} and {len(y)} labels")
        data.append(x)
        labels.append(y)
    images = torch.from_numpy(np.concatenate(data)).view(-1, 3, 32, 32)
    names = [f"class_{i}" for i in range(10)]
    if (root / "batches.meta").is_file():
        meta = _read(root / "batches.meta")
        names = _label_names(root / "batches.meta", meta, names)
        if len(names) != 10:
            raise ValueError(f"{root / 'batches.meta'}: b'label_names' must name 10 classes, "
                             f"but names {len(names)}")
    return images, torch.from_numpy(np.concatenate(labels)), names


def _label_names(path: Path, meta: Any, default: list[str]) -> list[str]:
    """``meta[b"label_names"]`` as str: a list of UTF-8 bytes or str, else ``ValueError``."""
    names = meta.get(b"label_names", default) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{path}: b'label_names' must be a list of class names, but got "
                         f"{type(names).__name__ if isinstance(meta, dict) else 'no dict'}")
    decoded = []
    for i, n in enumerate(names):
        if not isinstance(n, (bytes, str)):
            raise ValueError(f"{path}: b'label_names'[{i}] must be bytes or str, but got "
                             f"{type(n).__name__}")
        try:
            decoded.append(n.decode("utf-8") if isinstance(n, bytes) else n)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: b'label_names'[{i}] is not UTF-8 text ({n[:20]!r}: "
                             f"{err.reason})") from None
    return decoded


class CIFAR10Pickles(Dataset):
    """CIFAR-10 train or test split from the local pickles.

    Items are ``(image (3, 32, 32) float32 in [0, 1], label int64)``; ``transform``
    (optional) is applied to the float image.

    Args:
        root: the ``cifar-10-batches-py`` folder.
        train: training batches (50000) or the test batch (10000). Default: True.
        transform: callable on the (3, 32, 32) tensor. Default: None.
    """

    def __init__(self, root: str | Path, train: bool = True, transform=None) -> None:
        self.images, self.labels, self.classes = load_cifar10(root, train)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i].float() / 255.0
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


def cifar10_splits(root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                   transform=None) -> dict[str, Dataset | None]:
    """``{"train", "val", "test"}``: the training batches split by ``seed`` into train and
    val (``val_fraction``; 0 gives no val split, None), and the test batch.
    ``transform`` applies to all three. An empty split raises ``ValueError``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), but got {val_fraction}")
    full = CIFAR10Pickles(root, train=True, transform=transform)
    test = CIFAR10Pickles(root, False, transform)
    if len(test) == 0:
        raise ValueError(f"the test split of {str(root)!r} is empty: test_batch holds no image")
    splits = named_splits(full, {"val": val_fraction, "train": 1.0 - val_fraction}, seed,
                          f"CIFAR-10 folder {str(root)!r}")
    return {**splits, "test": test}
