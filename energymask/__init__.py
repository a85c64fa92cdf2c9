"""energymask: energy-based spatial masking (ERSM) and patch energy dropout (PB-EDropout).

See docs/design.md; the core needs neither Lightning nor matplotlib.
"""

from energymask.attribution import attribution_maps
from energymask.deletion import DeletionResult, deletion_curve, insertion_curve
from energymask.dropblock import DropBlock2d, drop_block_2d
from energymask.ersm import (
    EnergyMask2d,
    EnergyMaskOutput,
    ErsmSettings,
    collect_regularizer,
    energy_mask_2d,
    energy_mask_layers,
)
from energymask.mask_quality import mask_quality
from energymask.models import Classifier, FrozenBackboneClassifier, shallow_cnn, small_cnn
from energymask.occlusion import OcclusionResult, occlusion_robustness
from energymask.pbedropout import (
    PBEDropout2d,
    PBEDropoutOutput,
    PBEDropoutSettings,
    pb_edropout_2d,
)
from energymask.surgery import (
    InsertedAfter,
    insert_after,
    insertable_names,
    inserted_layers,
    remove_inserted,
)

__version__ = "0.1.0"

__all__ = [
    "DeletionResult",
    "OcclusionResult",
    "attribution_maps",
    "deletion_curve",
    "insertion_curve",
    "mask_quality",
    "occlusion_robustness",
    "Classifier",
    "DropBlock2d",
    "EnergyMask2d",
    "EnergyMaskOutput",
    "ErsmSettings",
    "FrozenBackboneClassifier",
    "InsertedAfter",
    "PBEDropout2d",
    "PBEDropoutOutput",
    "PBEDropoutSettings",
    "collect_regularizer",
    "drop_block_2d",
    "energy_mask_2d",
    "energy_mask_layers",
    "insert_after",
    "insertable_names",
    "inserted_layers",
    "pb_edropout_2d",
    "remove_inserted",
    "shallow_cnn",
    "small_cnn",
]
