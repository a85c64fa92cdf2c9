"""Model surgery: put a layer after named submodules of any ``nn.Module`` and take it out.

``insert_after(model, ["layer3"], lambda name, channels: EnergyMask2d(channels))``
replaces ``model.layer3`` with ``InsertedAfter(block=<layer3>, layer=<new>)``:
the block's parameters move under ``layer3.block.*``, the new layer's under
``layer3.layer.*``. :func:`remove_inserted` restores the original module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


class InsertedAfter(nn.Module):
    """Runs ``block`` then ``layer``: the wrapper that surgery puts in place."""

    def __init__(self, block: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.layer = layer

    def forward(self, *args, **kwargs) -> Tensor:
        out = self.block(*args, **kwargs)
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"an inserted {type(self.layer).__name__} needs a 4D (B, C, H, W) output from the "
                f"block before it, but got {shape}"
            )
        return self.layer(out)


def insertable_names(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """Names of submodules a layer can be inserted after.

    Without ``example_input`` every named submodule (not the root, not inside an
    inserted wrapper). With it, only those whose output is a 4D tensor for that
    input (one forward pass, in eval mode and without gradients).
    """
    names = [name for name, _ in model.named_modules() if name and not _inside_wrapper(model, name)]
    if example_input is None:
        return names
    four_d = output_shapes(model, names, example_input)
    return [n for n in names if n in four_d]


def output_shapes(model: nn.Module, names: Iterable[str], x: Tensor) -> dict[str, torch.Size]:
    """Shapes of the 4D outputs of the named submodules for input ``x``.

    One forward pass in eval mode without gradients; names whose output is not a
    4D tensor are left out. The model's train/eval mode is restored.
    """
    found: dict[str, torch.Size] = {}
    hooks = []
    for name in names:

        def hook(_m, _i, out, name=name):
            if isinstance(out, Tensor) and out.dim() == 4:
                found[name] = out.shape

        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def _inside_wrapper(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), InsertedAfter):
            return True
    return False


def _out_channels(module: nn.Module) -> int | None:
    """Best guess of a block's output channels from its last conv / norm layer."""
    channels = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            channels = m.out_channels
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.InstanceNorm2d):
            channels = getattr(m, "num_features", None) or getattr(m, "num_channels", None)
    return channels


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def insert_after(
    model: nn.Module,
    names: str | Iterable[str],
    factory: Callable[[str, int], nn.Module],
    channels: dict[str, int] | None = None,
) -> dict[str, nn.Module]:
    """Insert ``factory(name, channels)`` after each named submodule of ``model``, in place.

    Args:
        model: any module.
        names: one name or several, as in ``model.named_modules()``.
        factory: builds the layer from the block name and its output channels.
        channels: output channels per name where they cannot be read from the
            block's last conv or norm layer.

    Returns:
        The inserted layers by block name.
    """
    names = [names] if isinstance(names, str) else list(names)
    valid = insertable_names(model)
    for name in names:
        if name in valid and isinstance(model.get_submodule(name), InsertedAfter):
            raise ValueError(f"a layer is already inserted after {name!r}")
        if name not in valid:
            raise ValueError(f"unknown layer name {name!r}; valid names are: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, but got {names}")
    layers: dict[str, nn.Module] = {}
    for name in names:
        block = model.get_submodule(name)
        c = (channels or {}).get(name) or _out_channels(block)
        if c is None:
            raise ValueError(
                f"cannot tell the output channels of {name!r}: pass channels={{{name!r}: C}}"
            )
        layer = factory(name, c)
        _set_submodule(model, name, InsertedAfter(block, layer))
        layers[name] = layer
    return layers


def inserted_layers(model: nn.Module, kind: type | None = None) -> dict[str, nn.Module]:
    """Layers put in by :func:`insert_after`, by block name, optionally of one type."""
    return {
        name: m.layer
        for name, m in model.named_modules()
        if isinstance(m, InsertedAfter) and (kind is None or isinstance(m.layer, kind))
    }


def remove_inserted(model: nn.Module, kind: type | None = None) -> dict[str, nn.Module]:
    """Undo :func:`insert_after` (for layers of ``kind``, or all); returns the removed layers."""
    removed = inserted_layers(model, kind)
    for name in sorted(removed, key=lambda n: -n.count(".")):
        wrapper = model.get_submodule(name)
        _set_submodule(model, name, wrapper.block)
    return removed
