"""Model surgery: put a layer after named submodules of any ``nn.Module`` and take it out.

``insert_after(model, ["layer3"], lambda name, channels: EnergyMask2d(channels))``
replaces ``model.layer3`` with ``InsertedAfter(block=<layer3>, layer=<new>)``:
the block's parameters move under ``layer3.block.*``, the new layer's under
``layer3.layer.*``. :func:`remove_inserted` restores the original module.
"""

from __future__ import annotations

import functools
from collections import Counter
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


def trace_calls(model: nn.Module, x: Tensor) -> list[tuple[str, torch.Size | None]]:
    """Every call of a named submodule during ``model(x)``, in the order the calls return.

    Each entry is ``(name, shape)``, with ``shape`` the output's shape when it is
    a tensor and None otherwise; a module called twice appears twice, and a
    container returns after its children. One forward pass in eval mode without
    gradients; the model's train/eval mode is restored.
    """
    calls: list[tuple[str, torch.Size | None]] = []

    def hook(_m, _i, out, name):
        calls.append((name, out.shape if isinstance(out, Tensor) else None))

    hooks = [m.register_forward_hook(functools.partial(hook, name=name))
             for name, m in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return calls


def output_shapes(model: nn.Module, names: Iterable[str], x: Tensor) -> dict[str, torch.Size]:
    """Shapes of the 4D outputs of the named submodules for input ``x`` (first call of each).

    One forward pass in eval mode without gradients (:func:`trace_calls`); names
    whose output is not a 4D tensor, or that do not run, are left out.
    """
    wanted = set(names)
    found: dict[str, torch.Size] = {}
    for name, shape in trace_calls(model, x):
        if name in wanted and shape is not None and len(shape) == 4:
            found.setdefault(name, shape)
    return found


def last_spatial_block(model: nn.Module, x: Tensor) -> str:
    """The block ``layers=None`` picks: the end of the last stage with a grid larger than 1x1.

    Candidates are submodules with parameters that run once per forward and
    output a 4D tensor with H * W > 1 for ``x``, outside inserted wrappers. The
    last candidate to return is the outermost container of the last stage (a
    ResNet's ``layer4``, a torchvision ConvNeXt's ``features``); a plain
    ``nn.Sequential`` returns its last child's output, so the choice moves into
    the last child while that child is a candidate: ``layer4.1`` (ResNet),
    ``features.7.2`` (torchvision ConvNeXt), ``stages.3`` (timm ConvNeXt),
    ``features.8`` (torchvision EfficientNet). A pooling layer or a 1x1 output
    (``avgpool``) is never picked.

    Raises:
        ValueError: no submodule qualifies.
    """
    calls = trace_calls(model, x)
    counts = Counter(name for name, _ in calls)
    spatial = {
        name for name, shape in calls
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1
        and counts[name] == 1 and not _inside_wrapper(model, name)
        and any(True for _ in model.get_submodule(name).parameters())
    }
    order = [name for name, _ in calls if name in spatial]
    if not order:
        raise ValueError(
            f"no submodule of {type(model).__name__} with parameters outputs a (B, C, H, W) "
            f"tensor with H * W > 1 for an input of shape {tuple(x.shape)}; pass the layer names"
        )
    name = order[-1]
    while True:
        block = model.get_submodule(name)
        children = list(block.named_children())
        if type(block).forward is not nn.Sequential.forward or not children:
            return name
        child = f"{name}.{children[-1][0]}"
        if child not in spatial:
            return name
        name = child


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
    example_input: Tensor | None = None,
) -> dict[str, nn.Module]:
    """Insert ``factory(name, channels)`` after each named submodule of ``model``, in place.

    Everything is checked, and every layer built, before the model changes: a
    failing call leaves it as it was.

    Args:
        model: any module.
        names: one name or several, as in ``model.named_modules()``.
        factory: builds the layer from the block name and its output channels.
        channels: output channels per name where they cannot be read from the
            block's last conv or norm layer.
        example_input: an input for ``model``. When given, one forward pass
            (:func:`trace_calls`) checks that each named block outputs a 4D
            (B, C, H, W) tensor and runs once per forward (a module its parent
            calls twice, like the ReLU of torchvision's ``BasicBlock``, is
            refused: the layer would act twice), and reads the channels.
            Without it, the repeated-call check runs at the first call of each
            block's parent (:class:`OneCallCheck`) and raises there.

    Returns:
        The inserted layers by block name.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be str, but got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, but got {names}")
    valid = insertable_names(model)
    for name in names:
        if name in valid and isinstance(model.get_submodule(name), InsertedAfter):
            raise ValueError(f"a layer is already inserted after {name!r}")
        if name not in valid:
            raise ValueError(f"unknown layer name {name!r}; valid names are: {', '.join(valid)}")
    found = dict(channels or {})
    if example_input is not None:
        found = {**_checked_channels(model, names, example_input), **found}
    layers: dict[str, nn.Module] = {}
    for name in names:
        c = found.get(name) or _out_channels(model.get_submodule(name))
        if c is None:
            raise ValueError(
                f"cannot tell the output channels of {name!r}: pass channels={{{name!r}: C}}"
            )
        layers[name] = factory(name, c)
    for name in sorted(names, key=lambda n: -n.count(".")):  # inner blocks first
        wrapper = InsertedAfter(model.get_submodule(name), layers[name])
        _set_submodule(model, name, wrapper)
        parent = name.rpartition(".")[0]
        if example_input is None and parent:
            OneCallCheck(model.get_submodule(parent), wrapper, name)
    return layers


def _repeated_call_error(name: str, calls: int) -> ValueError:
    parent = name.rpartition(".")[0] or "the model"
    return ValueError(
        f"{name!r} runs {calls} times per forward (its parent calls it more than once), so a "
        f"layer inserted after it would act {calls} times; insert after a block that runs "
        f"once, for example its parent {parent!r}"
    )


class OneCallCheck:
    """Refuses, at the first call of ``parent``, an inserted block that it called more than once.

    Hooks on ``parent`` (count from its start, check at its end) and on the
    wrapper (count); all three are removed after that first call.
    """

    def __init__(self, parent: nn.Module, wrapper: InsertedAfter, name: str) -> None:
        self.name, self.calls = name, 0
        self.handles = [parent.register_forward_pre_hook(self.reset),
                        wrapper.register_forward_hook(self.count),
                        parent.register_forward_hook(self.check)]

    def reset(self, *_: object) -> None:
        self.calls = 0

    def count(self, *_: object) -> None:
        self.calls += 1

    def check(self, *_: object) -> None:
        for handle in self.handles:
            handle.remove()
        if self.calls > 1:
            raise _repeated_call_error(self.name, self.calls)


def _checked_channels(model: nn.Module, names: list[str], x: Tensor) -> dict[str, int]:
    """Output channels of the named blocks for ``x``; refuses non-4D outputs and repeated calls."""
    calls = trace_calls(model, x)
    counts = Counter(name for name, _ in calls)
    shapes: dict[str, torch.Size | None] = {}
    for name, shape in calls:
        shapes.setdefault(name, shape)
    for name in names:
        if counts[name] > 1:
            raise _repeated_call_error(name, counts[name])
        shape = shapes.get(name)
        if shape is None or len(shape) != 4:
            got = "no call" if name not in counts else (
                tuple(shape) if shape is not None else "not a tensor")
            raise ValueError(
                f"layer {name!r} does not output a 4D (B, C, H, W) tensor for the example input "
                f"of shape {tuple(x.shape)} (got {got})"
            )
    return {name: int(shapes[name][1]) for name in names}


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


__all__ = ["InsertedAfter", "insert_after", "insertable_names", "inserted_layers",
           "last_spatial_block", "output_shapes", "remove_inserted", "trace_calls"]
