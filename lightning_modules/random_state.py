"""Who owns which random stream of a run, so that a resumed run is the straight run.

A batch's randomness comes from three places, each with one owner:

- the training order and the data's augmentation: the training loader.
  :class:`~energymask.data.ResumableLoader` over an
  :class:`~energymask.data.EpochSampler` (the project's data modules) saves its
  position in every checkpoint and seeds each item's draws by ``(seed, epoch,
  index)``, in the main process and in workers alike. Any other loader's order
  and augmentation are not in the checkpoint: :func:`warn_if_not_resumable`
  says so once, at fit start.
- the draws of the model during training (dropout, PB-EDropout's sampler when
  the layer has no ``seed``): the process's global generators, which
  :class:`RandomState` saves in each checkpoint and restores. The application
  (``energymask train``) always attaches one; ``PBEDropoutCallback`` attaches
  one on a single process when its layers draw from the global generator and
  the Trainer has none.
- a PB-EDropout layer with a ``seed``: its own generator, saved in its extra
  state (part of the weights).
"""

from __future__ import annotations

import random
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from typing_extensions import override

from energymask.data.resumable import EpochSampler, ResumableLoader

from ._compat import Callback

if TYPE_CHECKING:
    import lightning.pytorch as pl

_checked: weakref.WeakSet = weakref.WeakSet()  # trainers already warned about


class RandomState(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) global generators in each
    checkpoint and restores them on resume.

    Lightning checkpoints hold the weights, the optimiser and the loops but not the
    global generators that dropout and PB-EDropout's sampler draw from; without
    them a resumed run is not the straight run. The states are plain values and
    tensors, so the checkpoint still loads with ``weights_only=True``. Attach one
    per Trainer (the generators are global).
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        random.setstate(state_dict["python"])
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warn_if_not_resumable(trainer)


def _loaders(obj: Any) -> list[Any]:
    """The loaders in ``trainer.train_dataloader`` (one, or a list / dict of them)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _loaders(v)]
    return [] if obj is None else [obj]


def resumable(loader: Any) -> bool:
    """Whether ``loader``'s order and augmentation are restored from a checkpoint."""
    return isinstance(loader, ResumableLoader) and isinstance(loader.sampler, EpochSampler)


def warn_if_not_resumable(trainer: pl.Trainer) -> None:
    """Warn (once per Trainer) when a training loader cannot be resumed exactly.

    Call at ``on_train_start`` (the loaders exist from then on).
    """
    if trainer in _checked:
        return
    _checked.add(trainer)
    others = [type(x).__name__ for x in _loaders(trainer.train_dataloader) if not resumable(x)]
    if others and trainer.global_rank == 0:
        warnings.warn(
            f"the training loader ({', '.join(others)}) cannot be resumed exactly: its order and "
            "the random draws of its transforms are not saved in checkpoints, so a run resumed "
            "from one trains on other batches than a straight run. Use "
            "energymask.data.ResumableLoader(dataset, batch_size=..., "
            "sampler=EpochSampler(len(dataset), seed)) or the energymask data modules "
            "(docs/reliability.md)", UserWarning, stacklevel=2)


__all__ = ["RandomState", "resumable", "warn_if_not_resumable"]
