"""The application's one evaluation protocol: what ``evaluate``, the demo and the recipes measure.

A frozen, plain-valued :class:`EvaluationProtocol` with one default, written
beside every result (``evaluation.json``'s ``"protocol"``), run by
:func:`~energymask.lightning_modules.app.evaluating.evaluate_run`. This module
imports neither torch nor Lightning, so the command line's parser takes its
defaults from here.

Defaults that had drifted apart before this module (issue 23) and the value kept:

- ``steps``: the CLI used 16, the demo and recipes 17. **17** won: on the 16x16
  token grid of the demo's ERSM layers, 17 evenly spaced counts are 0, 16, ...,
  256 tokens, whole rows of the grid; 16 steps give uneven counts.
- ``perturbations_per_eval``: the CLI used 1, the demo and recipes 16. **16**
  won: it batches Captum's perturbations and does not change a result
  (``tests/core/test_deletion.py``), only the time.
- on-object occlusion: the CLI placed it only where the data has object masks,
  the demo always (its data always has them). One rule now: **where the data
  has object masks**.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from energymask.constants import (
    DELETION_PROTOCOLS,
    OCCLUSION_FRACTIONS,
    OCCLUSION_PLACEMENTS,
    ORDERINGS,
)

#: The orderings (of :data:`~energymask.constants.ORDERINGS`) every evaluation runs; the
#: Captum ones are asked for.
BASE_ORDERINGS = ("energy", "magnitude", "random")
#: ``--orderings`` names -> the Captum deletion orderings.
ORDERINGS_EXTRA = {"gradcam": "gradcam", "ablation": "feature_ablation",
                   "feature_ablation": "feature_ablation"}
#: The occlusion placements the application offers (of
#: :data:`~energymask.constants.OCCLUSION_PLACEMENTS`): anywhere, or on the object (data
#: with object masks).
PLACEMENTS = tuple(p for p in OCCLUSION_PLACEMENTS if p != "background")


@dataclass(frozen=True)
class EvaluationProtocol:
    """How a trained model is evaluated; every field is a plain value.

    Args:
        orderings: deletion orderings (of :data:`~energymask.constants.ORDERINGS`).
            Default: :data:`BASE_ORDERINGS`.
        steps: evenly spaced deleted-token counts, ends included (>= 2). Default: 17.
        deletion_protocol: of :data:`~energymask.constants.DELETION_PROTOCOLS`.
            Default: "binary".
        deletion_samples: the deletion test uses the first N test images; None:
            all. Default: None.
        fractions: occluded fractions of the image, each in [0, 1]. Default:
            :data:`~energymask.constants.OCCLUSION_FRACTIONS`.
        placements: occlusion placements (of :data:`PLACEMENTS`); ``object`` runs
            only on data with object masks. Default: both.
        patch_size: occluding patch side in pixels (>= 1). Default: 8.
        batch_size: test images per batch (>= 1). Default: 128.
        perturbations_per_eval: Captum's batching knob; results do not depend
            on it (>= 1). Default: 16.
        seed: seed of the random ordering and of the occlusions. Default: 0.
        num_workers: DataLoader worker processes reading the test images; results
            do not depend on it (>= 0). Default: 0.
        sparse: each deletion step through the sparse masked-residual model
            (``deletion_curve(sparse=True)``, docs/design.md §11; binary protocol
            only). Default: False.
    """

    orderings: tuple[str, ...] = BASE_ORDERINGS
    steps: int = 17
    deletion_protocol: str = "binary"
    deletion_samples: int | None = None
    fractions: tuple[float, ...] = OCCLUSION_FRACTIONS
    placements: tuple[str, ...] = PLACEMENTS
    patch_size: int = 8
    batch_size: int = 128
    perturbations_per_eval: int = 16
    seed: int = 0
    sparse: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "orderings", tuple(self.orderings))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "placements", tuple(self.placements))
        for name, allowed in (("orderings", ORDERINGS), ("placements", PLACEMENTS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty selection of {list(allowed)}, "
                                 f"but got {list(getattr(self, name))}")
        if self.deletion_protocol not in DELETION_PROTOCOLS:
            raise ValueError(f"deletion_protocol must be one of {list(DELETION_PROTOCOLS)}, "
                             f"but got {self.deletion_protocol!r}")
        for name, least in (("steps", 2), ("patch_size", 1), ("batch_size", 1),
                            ("perturbations_per_eval", 1), ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be >= {least}, an int, but got {value!r}")
        samples = self.deletion_samples
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise ValueError(f"deletion_samples must be None or an int >= 1, but got "
                             f"{self.deletion_samples!r}")
        if not isinstance(self.sparse, bool):
            raise TypeError(f"sparse must be a bool, but got {self.sparse!r}")
        if not self.fractions or not all(0.0 <= f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be values in [0, 1], but got {list(self.fractions)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), as written into ``evaluation.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationProtocol:
        """The protocol :meth:`to_dict` wrote; unknown keys: ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown evaluation protocol settings {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**values)


__all__ = ["BASE_ORDERINGS", "ORDERINGS_EXTRA", "PLACEMENTS", "EvaluationProtocol"]
