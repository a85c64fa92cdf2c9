"""Read Lightning checkpoints safely, and load a model trained with the callbacks for inference."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, TypeVar

import torch

from ._compat import is_lightning_module
from ._inserting import insert_from_state
from .ersm_callback import make_ersm
from .pbedropout_callback import make_pbedropout

M = TypeVar("M")

FACTORIES = {"ersm": make_ersm, "pbedropout": make_pbedropout}


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """A Lightning checkpoint file as a dict, read with ``torch.load(weights_only=True)``.

    Only tensors and plain values are unpickled, so nothing in the file can run.
    Every failure is a clear error that names the file and says what is wrong.

    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file cannot be read.
        ValueError: a folder, an empty or truncated file, a file that is not a
            PyTorch checkpoint, one that holds other objects than tensors and
            plain values, or one without Lightning's ``state_dict``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): it was not written completely")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as err:
        raise PermissionError(f"checkpoint {path} cannot be read: {err}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, IndexError,
            ValueError, TypeError, AttributeError) as err:
        if "unsupported global" in str(err).lower():  # a pickled class or function: refused
            raise ValueError(
                f"checkpoint {path} holds objects other than tensors and plain values, which "
                "torch.load(weights_only=True) refuses (nothing in it was run); it was not "
                "written by Lightning's checkpointing, or a module saved custom objects in it"
            ) from None
        with path.open("rb") as f:
            zip_file = f.read(4) == b"PK\x03\x04"  # torch.save's format is a zip archive
        what = ("is truncated or corrupted (an incomplete zip archive)" if zip_file
                else "is not a PyTorch checkpoint")
        raise ValueError(
            f"checkpoint {path} ({size} bytes) {what}: torch.load failed with "
            f"{type(err).__name__}: {err}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        found = f"keys {sorted(map(str, ckpt))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' dict; found {found})"
        )
    return ckpt


def _callback_states(path: Path, ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """The ERSMCallback / PBEDropoutCallback states of a checkpoint, checked."""
    states = [s for s in (ckpt.get("callbacks") or {}).values()
              if isinstance(s, dict) and s.get("kind") in FACTORIES]
    for state in states:
        layers, settings = state.get("layers"), state.get("settings")
        channels = state.get("channels", {})
        if not (isinstance(layers, list) and layers and all(isinstance(n, str) for n in layers)
                and isinstance(settings, dict) and isinstance(channels, dict)):
            raise ValueError(
                f"checkpoint {path} has a malformed {state['kind']} callback state (layers "
                f"{layers!r}, settings {settings!r}, channels {channels!r}): expected a list of "
                "layer names and two dicts"
            )
    return states


def _check_saved_shapes(path: Path, state: dict[str, Any], weights: dict[str, Any]) -> None:
    """Refuse saved settings that do not give the saved weights' shapes (checked on the
    ``meta`` device, so settings edited to huge sizes allocate nothing)."""
    for name in state["layers"]:
        channels = state["channels"].get(name)
        if not isinstance(channels, int) or channels < 1:
            continue
        with torch.device("meta"):
            layer = FACTORIES[state["kind"]](channels, state["settings"])
        for key, tensor in layer.state_dict().items():
            saved = weights.get(f"{name}.layer.{key}")
            fresh = isinstance(tensor, torch.Tensor) and tensor.numel()  # not lazily allocated
            if fresh and isinstance(saved, torch.Tensor) and saved.shape != tensor.shape:
                raise ValueError(
                    f"the {state['kind']} settings saved in {path} ({state['settings']}) make "
                    f"{name}.layer.{key} of shape {tuple(tensor.shape)}, but the checkpoint's "
                    f"weights have {tuple(saved.shape)}: the saved settings were changed after "
                    "training"
                )


def load_for_inference(
    checkpoint_path: str | os.PathLike,
    module_class: type[M],
    map_location: str | torch.device = "cpu",
    **init_kwargs: Any,
) -> M:
    """Rebuild ``module_class`` from a Lightning checkpoint, with its inserted layers, in eval mode.

    Builds ``module_class(**hyper_parameters, **init_kwargs)`` (``init_kwargs``
    give what ``save_hyperparameters`` left out, for example ``model=``),
    re-inserts the layers saved in the ERSMCallback / PBEDropoutCallback states,
    then loads the weights and buffers (EMA masks included). No training code
    runs, and the file is read with :func:`read_checkpoint` (``weights_only=True``).

    Args:
        checkpoint_path: a ``.ckpt`` file written by ``Trainer`` / ``ModelCheckpoint``.
        module_class: the LightningModule class that was trained (of either
            ``lightning.pytorch`` or ``pytorch_lightning``).
        map_location: device for the tensors. Default: "cpu".
        **init_kwargs: constructor arguments, over the saved hyper-parameters.
    """
    if not (isinstance(module_class, type) and is_lightning_module(module_class)):
        raise TypeError(
            f"module_class must be a LightningModule subclass, but got {module_class!r}"
        )
    path = Path(checkpoint_path)
    ckpt = read_checkpoint(path, map_location)
    states = _callback_states(path, ckpt)
    hparams = {**dict(ckpt.get("hyper_parameters") or {}), **init_kwargs}
    try:
        module = module_class(**hparams)
    except TypeError as err:
        raise TypeError(
            f"cannot build {module_class.__name__} from the hyper-parameters of {path} "
            f"({sorted(hparams)}): {err}; pass the missing or right arguments as **init_kwargs"
        ) from err
    for state in states:
        _check_saved_shapes(path, state, ckpt["state_dict"])
        try:
            insert_from_state(module, state, FACTORIES)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"the {state['kind']} layers saved in {path} do not fit {module_class.__name__} "
                f"(layers {state['layers']}): {err}"
            ) from err
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {path} do not fit {module_class.__name__}: {err}"
        ) from None
    return module.eval()


__all__ = ["load_for_inference", "read_checkpoint"]
