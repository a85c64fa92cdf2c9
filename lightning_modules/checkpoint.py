"""Load a model trained with the energymask callbacks for inference, in one call."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch

from ._inserting import insert_from_state
from .ersm_callback import make_ersm
from .pbedropout_callback import make_pbedropout

M = TypeVar("M", bound=pl.LightningModule)

FACTORIES = {"ersm": make_ersm, "pbedropout": make_pbedropout}


def load_for_inference(
    checkpoint_path: str | os.PathLike,
    module_class: type[M],
    weights_only: bool = True,
    map_location: str | torch.device = "cpu",
    **init_kwargs: Any,
) -> M:
    """Rebuild ``module_class`` from a Lightning checkpoint, with its inserted layers, in eval mode.

    Builds ``module_class(**hyper_parameters, **init_kwargs)`` (``init_kwargs``
    give what ``save_hyperparameters`` left out, for example ``model=``),
    re-inserts the layers saved in the ERSMCallback / PBEDropoutCallback states,
    then loads the weights and buffers (EMA masks included). No training code runs.

    Args:
        checkpoint_path: a ``.ckpt`` file written by ``Trainer`` / ``ModelCheckpoint``.
        module_class: the LightningModule class that was trained.
        weights_only: read the file with ``torch.load(weights_only=True)``. Default: True.
        map_location: device for the tensors. Default: "cpu".
        **init_kwargs: constructor arguments, over the saved hyper-parameters.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, pl.LightningModule)):
        raise TypeError(
            f"module_class must be a LightningModule subclass, but got {module_class!r}"
        )
    ckpt = torch.load(checkpoint_path, map_location=map_location, weights_only=weights_only)
    if "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint_path} is not a Lightning checkpoint (no 'state_dict' key)")
    module = module_class(**{**dict(ckpt.get("hyper_parameters", {})), **init_kwargs})
    states = [s for s in ckpt.get("callbacks", {}).values()
              if isinstance(s, dict) and s.get("kind") in FACTORIES]
    for state in states:
        insert_from_state(module, state, FACTORIES)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


__all__ = ["load_for_inference"]
