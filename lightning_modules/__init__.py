"""Lightning shell over the core: callbacks, modules, data modules.

Works with both Lightning packages, ``lightning.pytorch`` (``import
lightning.pytorch as L``) and ``pytorch_lightning``: the callbacks, modules and
data modules derive from both packages' base classes (:mod:`._compat`), and the
callbacks accept a LightningModule of either.
"""

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
from .random_state import RandomState
from .robustness_callback import RobustnessResults, RobustnessTests

__all__ = [
    "CIFAR10DataModule",
    "ClutteredDigitsDataModule",
    "ERSMCallback",
    "FrozenBackboneERSM",
    "ImageFolderDataModule",
    "ImageClassifier",
    "MaskLoggerCallback",
    "PBEDropoutCallback",
    "RandomState",
    "RobustnessResults",
    "RobustnessTests",
    "TensorDataModule",
    "load_for_inference",
    "read_checkpoint",
]
