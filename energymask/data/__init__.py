"""Datasets: cluttered digits (default, no download), CIFAR-10 pickles, image folders;
their image format (:mod:`~energymask.data.transforms`) and shuffled loading that
resumes exactly (:mod:`~energymask.data.resumable`).

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
from energymask.data.resumable import EpochSampler, ResumableLoader
from energymask.data.transforms import Formatted, ImageTransform

__all__ = [
    "CIFAR10Pickles",
    "ClutteredDigits",
    "EpochSampler",
    "Formatted",
    "ImageFolder",
    "ImageTransform",
    "ResumableLoader",
    "cifar10_splits",
    "generate_cluttered_digits",
    "image_folder_splits",
    "load_cifar10",
    "load_source_digits",
    "make_splits",
]
