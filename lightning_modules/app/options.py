"""Plain values the command line offers and shows in ``--help``: data sets, backbones, layer
defaults, torch threads.

Imports neither torch nor Lightning (the parser answers ``--help`` from here in
well under 2 s). The layer defaults are the layers' own (the authors' values,
:class:`energymask.ersm.ErsmSettings`, :class:`energymask.pbedropout.PBEDropoutSettings`),
restated here because reading them from the classes would import torch;
``tests/app/test_options.py`` checks that they are equal.
"""

from __future__ import annotations

import os

DATASETS = ("cluttered-digits", "cifar10", "image-folder")
#: ImageNet's channel means and standard deviations (``--normalize imagenet``).
IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: What ``--backbone`` takes (:mod:`.backbones`).
BACKBONES_HELP = ("small_cnn, shallow_cnn, torchvision:NAME or timm:NAME (any model of the "
                  "library, built without downloading weights; for example "
                  "torchvision:resnet50, timm:convnext_tiny; pip install "
                  "'energymask[backbones]')")
#: :class:`~energymask.ersm.ErsmSettings`' defaults of the ``--ersm-*`` settings.
ERSM_DEFAULTS = {"lam": 1e-3, "gamma": 1e-3, "temperature": 1.0, "token_size": 1,
                 "gate": "soft"}
#: :class:`~energymask.pbedropout.PBEDropoutSettings`' defaults of the ``--pb-*`` settings.
PBEDROPOUT_DEFAULTS = {"p": 0.1, "patch_size": 4, "beta": 0.1, "population": 16,
                       "generations": 2}


def default_threads() -> int:
    """torch's CPU threads unless ``--threads``: half the CPUs this process may use, 1 to 8.

    torch takes every core by default; on a small or shared machine its threads
    then wait on each other (README, "Threads": measured by
    ``benchmarks/bench_threads.py``).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


__all__ = ["BACKBONES_HELP", "DATASETS", "ERSM_DEFAULTS", "IMAGENET_NORMALIZE",
           "PBEDROPOUT_DEFAULTS", "default_threads"]
