"""Backbones of the command line: the project's small CNNs and any torchvision or timm model.

``--backbone`` takes ``small_cnn``, ``shallow_cnn``, ``torchvision:NAME`` (for
example ``torchvision:resnet50``, ``torchvision:convnext_tiny``,
``torchvision:efficientnet_v2_s``) or ``timm:NAME`` (``timm:convnext_tiny``,
``timm:resnet18``; ``pip install 'energymask[backbones]'`` installs both
libraries, and a missing one is named in the error). Library models are built
with ``weights=None`` /
``pretrained=False`` (nothing is downloaded) and cut before their pooling and
head, so every backbone maps (B, C, H, W) -> (B, F, h, w) and
:class:`energymask.models.Classifier` adds global-average pooling and a linear
head. Pretrained weights come from a local file (``--weights PATH``,
:func:`load_weights`): the state dict of the library model as published (its
head's keys are ignored).

Layer names for ``--ersm`` / ``--pbedropout`` are the backbone's own module names:
``layer1`` ... ``layer4`` (ResNets of both libraries), ``stages.0`` ... ``stages.3``
(timm ConvNeXt), ``0`` ... ``7`` (torchvision ``features``: ConvNeXt, EfficientNet).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from energymask._extras import require
from energymask.models import feature_extractor, shallow_cnn, small_cnn

from .options import BACKBONES_HELP

SMALL = {"small_cnn": small_cnn, "shallow_cnn": shallow_cnn}
LIBRARIES = ("torchvision", "timm")
HELP = BACKBONES_HELP


def _library(module: str, backbone: str):
    """``import module``; missing, a ValueError (the command line's error) naming the extra."""
    try:
        return require(module, f"--backbone {backbone}")
    except ImportError as err:
        raise ValueError(str(err)) from err


def _torchvision(name: str, in_channels: int) -> tuple[nn.Module, str, str]:
    torchvision = _library("torchvision.models", f"torchvision:{name}")

    if in_channels != 3:
        raise ValueError(f"--backbone torchvision:{name} takes 3-channel images, but the data "
                         f"have {in_channels} channel(s)")
    try:
        model = torchvision.get_model(name, weights=None)
    except ValueError as err:
        raise ValueError(f"--backbone torchvision:{name}: torchvision has no model {name!r} "
                         f"(torchvision.models.list_models() lists them)") from err
    try:
        net = feature_extractor(model)
    except TypeError as err:
        raise ValueError(f"--backbone torchvision:{name}: no feature extractor found ({err})"
                         ) from None
    if net is getattr(model, "features", None):  # ConvNeXt, EfficientNet, VGG: head outside
        return net, "features.", ""
    return net, "", "fc"  # ResNet-like: every child before avgpool; the head is fc


def _timm(name: str, in_channels: int) -> tuple[nn.Module, str, str]:
    timm = _library("timm", f"timm:{name}")

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
                                  in_chans=in_channels)
    except RuntimeError as err:
        raise ValueError(f"--backbone timm:{name}: timm has no model {name!r} "
                         "(timm.list_models() lists them)") from err
    return model, "", model.pretrained_cfg.get("classifier", "")


def _split(backbone: str) -> tuple[str, str]:
    library, _, name = backbone.partition(":")
    if backbone in SMALL or (library in LIBRARIES and name):
        return library, name
    raise ValueError(f"--backbone must be {HELP}, but got {backbone!r}")


def build_backbone(backbone: str, in_channels: int, weights: str | Path | None = None
                   ) -> tuple[nn.Module, int]:
    """``(features, F)``: the backbone named ``backbone`` and its output channels F.

    ``weights``: a local state dict for a library backbone (:func:`load_weights`).

    Raises:
        ValueError: an unknown name, a torchvision model on non-RGB data, weights
            for one of the small CNNs, or weights that do not fit (see :func:`load_weights`).
        FileNotFoundError: ``weights`` does not exist.
    """
    library, name = _split(backbone)
    if backbone in SMALL:
        if weights is not None:
            raise ValueError(f"--weights loads torchvision / timm weights, but --backbone is "
                             f"{backbone!r} (train it from scratch, or use --resume)")
        net = SMALL[backbone](in_channels)
        return net, net.out_channels
    net, prefix, head = (_torchvision if library == "torchvision" else _timm)(name, in_channels)
    if weights is not None:
        load_weights(net, weights, backbone, prefix, head)
    was_training = net.training
    with torch.no_grad():
        channels = net.eval()(torch.zeros(1, in_channels, 64, 64)).shape[1]
    return net.train(was_training), channels


def load_weights(net: nn.Module, path: str | Path, backbone: str, prefix: str = "",
                 head: str = "") -> None:
    """Load the local state dict ``path`` (keys ``prefix + net's keys``) into ``net``.

    ``path`` holds the full library model's state dict (as torchvision and timm
    publish them; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is
    unwrapped), read with ``weights_only=True``. Keys outside ``prefix`` and under
    ``head`` (the classifier the backbone leaves out) are ignored; any other key
    the backbone lacks is an error. ``backbone`` names the model in the messages.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state dict, or misses keys or has other shapes
            than the backbone (the first ones are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights: {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a file that is not its own
        raise ValueError(f"--weights: {str(path)!r} is not a PyTorch state dict "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights: {str(path)!r} is not a state dict (a dict of tensors)")
    own = net.state_dict()
    mine = {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and k[len(prefix):] in own}
    missing = [prefix + k for k in own if k not in mine]
    if missing:
        raise ValueError(f"--weights: {str(path)!r} is not a state dict of {backbone}: it lacks "
                         f"{len(missing)} of its {len(own)} keys, for example "
                         f"{', '.join(missing[:3])}")
    extra = [k for k in state if k.startswith(prefix) and k[len(prefix):] not in own
             and not (head and k.startswith(head + "."))]
    if extra:
        raise ValueError(f"--weights: {str(path)!r} is not a state dict of {backbone}: it has "
                         f"{len(extra)} keys that the backbone lacks, for example "
                         f"{', '.join(extra[:3])}")
    wrong = [k for k, v in mine.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"--weights: {str(path)!r} does not fit {backbone}: {len(wrong)} "
                         f"tensors have other shapes, for example {prefix + k} "
                         f"{tuple(mine[k].shape)} instead of {tuple(own[k].shape)}")
    net.load_state_dict(mine)


__all__ = ["HELP", "LIBRARIES", "SMALL", "build_backbone", "load_weights"]
