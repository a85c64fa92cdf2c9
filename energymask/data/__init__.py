"""Datasets: cluttered digits (default, no download), CIFAR-10 pickles, image folders.

Plain ``torch.utils.data.Dataset`` classes and ``make_splits``-style functions; no
Lightning here (the DataModules in ``energymask.lightning_modules`` wrap these).
"""

from energymask.data.cifar10 import CIFAR10Pickles, cifar10_splits, load_cifar10
from energymask.data.cluttered_digits import (
    ClutteredDigits,
    generate_cluttered_digits,
    load_source_digits,
    make_splits,
)
from energymask.data.image_folder import ImageFolder, image_folder_splits

__all__ = [
    "CIFAR10Pickles",
    "ClutteredDigits",
    "ImageFolder",
    "cifar10_splits",
    "generate_cluttered_digits",
    "image_folder_splits",
    "load_cifar10",
    "load_source_digits",
    "make_splits",
]
