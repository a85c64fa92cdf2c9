"""Lightning shell over the core: callbacks, modules, data modules.

Built on the ``pytorch_lightning`` package (a ``lightning.pytorch`` Trainer is
refused with a message saying what to do).
"""

from .checkpoint import load_for_inference
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
]
