"""The core's named choices, defined once and importable without torch (ours).

Each concept's names live here, once, with what they mean; the module of the concept
imports them from here, checks them and documents them, and the command line's parser
(:mod:`energymask.lightning_modules.app.options`, ``.protocol``) reads them without
importing torch (``--help`` answers at once):

- :data:`GATES`: the masks an ERSM layer executes (:mod:`energymask.ersm`).
- :data:`ORDERINGS`: the built-in token orderings of the deletion test
  (:mod:`energymask.orderings`).
- :data:`DELETION_PROTOCOLS`: the deletion test's protocols and what each does with the
  tokens not yet deleted (:mod:`energymask.deletion`, the curves' titles in
  :mod:`energymask.viz`).
- :data:`OCCLUSION_FRACTIONS`, :data:`OCCLUSION_PLACEMENTS`: the occlusion test's default
  occluded fractions and where its patches go (:mod:`energymask.occlusion`).

Imports nothing.
"""

from __future__ import annotations

__all__ = ["DELETION_PROTOCOLS", "GATES", "OCCLUSION_FRACTIONS", "OCCLUSION_PLACEMENTS",
           "ORDERINGS"]

#: The mask an ERSM layer executes: ``"soft"`` (the authors': X ⊙ keep) or ``"hard"``
#: (ours: X ⊙ 1[keep ≥ 0.5] in training and eval, straight-through gradient).
GATES = ("soft", "hard")

#: The built-in token orderings of the deletion test (defined in :mod:`energymask.orderings`).
ORDERINGS = ("energy", "magnitude", "random", "gradcam", "feature_ablation")

#: The deletion test's protocols -> what each does with the tokens not yet deleted:
#: ``binary`` is the authors' forced binary mask, ``soft`` (ours) the model's own keep map.
DELETION_PROTOCOLS = {
    "binary": "the tokens not deleted are forced to keep 1",
    "soft": "the tokens not deleted keep their soft keep value",
}

#: The occluded fractions of the image the occlusion test measures by default.
OCCLUSION_FRACTIONS = (0.0, 0.1, 0.25, 0.5)

#: Where the occlusion test's patches go: anywhere, on the object, or on the background
#: (the last two need object masks).
OCCLUSION_PLACEMENTS = ("random", "object", "background")
