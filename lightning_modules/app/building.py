"""What a run's settings build: the model, the data module, the trained module.

``run.json`` holds plain values only (:mod:`.runs`), so the model is rebuilt from
it (backbone name, channels, classes) and :func:`load_for_inference` re-inserts
the ERSM / PB-EDropout layers from the checkpoint.
"""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energymask.models import Classifier
from energymask.surgery import insertable_names

from ..checkpoint import load_for_inference, read_checkpoint
from ..classifier import FrozenBackboneERSM, ImageClassifier
from ..datamodules import CIFAR10DataModule, ClutteredDigitsDataModule, ImageFolderDataModule
from .backbones import build_backbone
from .options import DATASETS, IMAGENET_NORMALIZE


def default_of(cls: type, name: str) -> Any:
    """The default value of ``cls.__init__``'s argument ``name`` (shown in ``--help``)."""
    return inspect.signature(cls).parameters[name].default


def build_model(backbone: str, in_channels: int, num_classes: int,
                weights: str | Path | None = None) -> Classifier:
    """``Classifier(backbone, F, num_classes)`` (see :mod:`.backbones` for the names)."""
    net, channels = build_backbone(backbone, in_channels, weights)
    return Classifier(net, channels, num_classes)


def build_datamodule(data: dict[str, Any], batch_size: int, seed: int):
    """The DataModule described by ``run.json``'s ``data`` entry.

    ``data["normalize"]``: ``"imagenet"`` normalises user images (CIFAR-10, image
    folders) with :data:`IMAGENET_NORMALIZE`, as pretrained torchvision / timm
    weights expect; absent or ``"none"``: images stay in [0, 1].
    """
    name = data.get("name")
    normalize = IMAGENET_NORMALIZE if data.get("normalize") == "imagenet" else None
    if name == "cluttered-digits":
        return ClutteredDigitsDataModule(
            data["num_train"], data["num_val"], data["num_test"], spurious=data["spurious"],
            seed=seed, batch_size=batch_size, with_masks=True,
        )  # fmt: skip
    if name in ("cifar10", "image-folder") and not data.get("data_dir"):
        raise ValueError(f"--data {name} needs --data-dir, the folder holding the data")
    loading = {"num_workers": data.get("num_workers", 0),
               "val_fraction": data.get("val_fraction", 0.1)}  # absent in older run.json
    if name == "cifar10":
        return CIFAR10DataModule(data["data_dir"], seed=seed, batch_size=batch_size,
                                 normalize=normalize, **loading)
    if name == "image-folder":
        size = data["image_size"]
        return ImageFolderDataModule(data["data_dir"], size=(size, size), seed=seed,
                                     batch_size=batch_size, normalize=normalize,
                                     bad_images=data.get("bad_images", "raise"), **loading)
    raise ValueError(f"data must be one of {list(DATASETS)}, but got {name!r}")


def qualify_layers(model: nn.Module, in_channels: int, names: list[str], option: str) -> list[str]:
    """Names of the LightningModule (``model.backbone.layer2``) from short ones.

    ``layer2`` means ``backbone.layer2``; any name of ``model.named_modules()``
    with a 4D output is accepted too, and so are the returned names themselves.
    """
    probe = torch.zeros(1, in_channels, 64, 64)
    valid = insertable_names(model, probe)
    out = []
    for name in names:
        name = name.removeprefix("model.")
        full = name if name in valid else f"backbone.{name}"
        if full not in valid:
            short = [n.removeprefix("backbone.") for n in valid if n.count(".") == 1]
            raise ValueError(f"{option}: unknown layer {name!r}; choose from {', '.join(short)} "
                             f"(or any of {', '.join(valid)})")
        out.append(f"model.{full}")
    return out


def example_images(model: nn.Module, shape: tuple[int, ...], option: str) -> torch.Tensor:
    """``zeros(1, *shape)``, checked by one forward of ``model``.

    ``ValueError`` naming ``option`` and the smallest square size (found by
    bisection over forwards of 1 image) the backbone works on, when its feature
    map vanishes for images of ``shape`` (C, H, W).
    """
    def works(h: int, w: int) -> str | None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, shape[0], h, w))
        except RuntimeError as err:
            return str(err).splitlines()[0]
        return None

    was_training = model.training
    model.eval()
    try:
        error = works(*shape[1:])
        if error is not None:
            high = next((2 ** k for k in range(1, 13) if works(2 ** k, 2 ** k) is None), None)
            need = "no size up to 4096 works"
            if high is not None:
                low = high // 2  # fails (or is 1)
                while high - low > 1:
                    mid = (low + high) // 2
                    low, high = (low, mid) if works(mid, mid) is None else (mid, high)
                need = f"it needs images of at least {high}x{high}"
            raise ValueError(f"{option}: the backbone's feature map vanishes for images of "
                             f"{shape[1]}x{shape[2]} ({error}); {need}")
    finally:
        model.train(was_training)
    return torch.zeros(1, *shape)


def output_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``model(x)`` (a backbone's feature map), in eval mode without gradients."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        model.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


def load_model(spec: dict[str, Any], checkpoint: Path) -> ImageClassifier:
    """The trained module of a run, with its inserted layers, in eval mode.

    ``spec["model"]`` names the backbone; with ``"frozen_backbone": true`` the
    module is the authors' :class:`FrozenBackboneERSM`, else an :class:`ImageClassifier`.
    """
    m = spec["model"]
    try:
        if m.get("frozen_backbone"):
            net, _ = build_backbone(m["backbone"], m["in_channels"])
            return load_for_inference(checkpoint, FrozenBackboneERSM, backbone=net)
        model = build_model(m["backbone"], m["in_channels"], m["num_classes"])
        return load_for_inference(checkpoint, ImageClassifier, model=model)
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError,
            EOFError) as err:
        raise ValueError(f"{str(checkpoint)!r} is not an energymask checkpoint of this run "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err


def checkpoint_model(checkpoint: Path) -> dict[str, Any]:
    """``{"num_classes", "frozen_backbone"}`` of a checkpoint the Lightning API wrote.

    Such a checkpoint (a ``ModelCheckpoint`` file of an :class:`ImageClassifier` or
    :class:`FrozenBackboneERSM`) has no ``run.json``; its hyper-parameters give the
    classes and the module class, the command line gives the backbone and the data.
    """
    hp = read_checkpoint(checkpoint).get("hyper_parameters")
    if not isinstance(hp, dict) or "num_classes" not in hp:
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a Lightning checkpoint of an "
                         "ImageClassifier or FrozenBackboneERSM (no num_classes hyper-parameter)")
    return {"num_classes": hp["num_classes"], "frozen_backbone": "num_features" in hp}


__all__ = ["build_datamodule", "build_model", "checkpoint_model", "default_of", "example_images",
           "load_model", "output_grid", "qualify_layers"]
