"""energymask: energy-based spatial masking (ERSM) and patch energy dropout (PB-EDropout).

See docs/design.md; the core needs neither Lightning nor matplotlib.

The names below are imported on first use (PEP 562), so ``import energymask.X``
costs only what ``X`` imports: the command line answers ``--help`` without torch.
"""

from typing import TYPE_CHECKING

from energymask._lazy import lazy_exports

_EXPORTS = {  # name -> the module that defines it (imported on first use)
    "attribution_maps": "energymask.attribution",
    "DeletionResult": "energymask.deletion",
    "deletion_curve": "energymask.deletion",
    "insertion_curve": "energymask.deletion",
    "DropBlock2d": "energymask.dropblock",
    "drop_block_2d": "energymask.dropblock",
    "EnergyMask2d": "energymask.ersm",
    "EnergyMaskOutput": "energymask.ersm",
    "ErsmSettings": "energymask.ersm",
    "collect_regularizer": "energymask.ersm",
    "energy_mask_2d": "energymask.ersm",
    "energy_mask_layers": "energymask.ersm",
    "mask_quality": "energymask.mask_quality",
    "Classifier": "energymask.models",
    "FrozenBackboneClassifier": "energymask.models",
    "shallow_cnn": "energymask.models",
    "small_cnn": "energymask.models",
    "OcclusionResult": "energymask.occlusion",
    "occlusion_robustness": "energymask.occlusion",
    "PBEDropout2d": "energymask.pbedropout",
    "PBEDropoutOutput": "energymask.pbedropout",
    "PBEDropoutSettings": "energymask.pbedropout",
    "pb_edropout_2d": "energymask.pbedropout",
    "InsertedAfter": "energymask.surgery",
    "insert_after": "energymask.surgery",
    "insertable_names": "energymask.surgery",
    "inserted_layers": "energymask.surgery",
    "remove_inserted": "energymask.surgery",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
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


__getattr__, __dir__ = lazy_exports("energymask", _EXPORTS, globals())

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
