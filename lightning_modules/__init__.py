"""Lightning shell over the core: callbacks, modules, data modules.

Works with both Lightning packages, ``lightning.pytorch`` (``import
lightning.pytorch as L``) and ``pytorch_lightning``: the callbacks, modules and
data modules derive from both packages' base classes (:mod:`._compat`), and the
callbacks accept a LightningModule of either. The names are imported on first
use (PEP 562): the command line (:mod:`.app.cli`) parses without Lightning.
"""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {  # name -> the module that defines it (imported on first use)
    "load_for_inference": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "FrozenBackboneERSM": ".classifier",
    "ImageClassifier": ".classifier",
    "CIFAR10DataModule": ".datamodules",
    "ClutteredDigitsDataModule": ".datamodules",
    "ImageFolderDataModule": ".datamodules",
    "TensorDataModule": ".datamodules",
    "ERSMCallback": ".ersm_callback",
    "MaskLoggerCallback": ".mask_logger",
    "PBEDropoutCallback": ".pbedropout_callback",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .checkpoint import load_for_inference, read_checkpoint
    from .classifier import FrozenBackboneERSM, ImageClassifier
    from .datamodules import (
        CIFAR10DataModule,
        ClutteredDigitsDataModule,
        ImageFolderDataModule,
        TensorDataModule,
    )
    from .ersm_callback import ERSMCallback
    from .mask_logger import MaskLoggerCallback
    from .pbedropout_callback import PBEDropoutCallback


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CIFAR10DataModule",
    "ClutteredDigitsDataModule",
    "ERSMCallback",
    "FrozenBackboneERSM",
    "ImageFolderDataModule",
    "ImageClassifier",
    "MaskLoggerCallback",
    "PBEDropoutCallback",
    "TensorDataModule",
    "load_for_inference",
    "read_checkpoint",
]
