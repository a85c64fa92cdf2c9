"""Lightning shell over the core: callbacks, modules, data modules.

Works with both Lightning packages, ``lightning.pytorch`` (``import
lightning.pytorch as L``) and ``pytorch_lightning``: the callbacks, modules and
data modules derive from both packages' base classes (:mod:`._compat`), and the
callbacks accept a LightningModule of either. The names are imported on first
use (PEP 562): the command line (:mod:`.app.cli`) parses without Lightning.
"""

from typing import TYPE_CHECKING

from energymask._lazy import lazy_exports

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
    "RandomState": ".random_state",
    "RobustnessResults": ".robustness_callback",
    "RobustnessTests": ".robustness_callback",
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
    from .random_state import RandomState
    from .robustness_callback import RobustnessResults, RobustnessTests


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

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
