"""Masked-residual semantics: blocks after a hard mask run their branch only where it is one.

DynConv (Verelst & Tuytelaars, "Dynamic Convolutions: Exploiting Spatial
Sparsity for Faster Inference", CVPR 2020, https://arxiv.org/abs/1912.03203)
executes a residual block's branch only at a mask's positions. This file is
the dense model of that semantics (docs/design.md §11), the one that trains,
resumes and reloads; :mod:`energymask.sparse` executes it sparsely.

After the mask point (a named module, or an ERSM layer with a binary mask) the
feature map becomes ``x ⊙ M``; then every following residual block computes

    out = s(x) + M_b ⊙ (block(x) − s(x))      (as ``where(M_b, block(x), s(x))``)

with ``s`` the block's shortcut (the identity, or its ``downsample`` where it
strides) and ``M_b`` the mask at the block's output grid where it strides:
max-pooled with kernel = stride = the block's stride (ceil mode; ``pool="max"``,
the issue's), or, ours, ``pool="nearest"``: ``M[::s, ::s]``, the cell the
downsample's 1x1 stride-s convolution reads (docs/design.md §11).

``where`` sends no gradient to ``M_b``: the mask learns only from the mask
point's ``x ⊙ M``. Ours, ``block_gradient=True``: in training, a hard ERSM
mask also gets the straight-through gradient of each block's choice,
``∂L/∂M_b = Σ_c (block(x) − s(x)) · ∂L/∂out``, by adding
``(M̃_b − M̃_b.detach()) ⊙ (block(x) − s(x))``, zero in value, to the output
(``M̃`` the ERSM layer's executed keep with its graph, pooled like ``M``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask.ersm import EnergyMask2d
from energymask.surgery import InsertedAfter

#: How the mask reaches a striding block's grid: "max" (an output position is
#: computed when any cell of its s×s window is kept; the issue's) or "nearest"
#: (ours: the window's top-left cell, the one a 1x1 stride-s downsample reads).
POOLS = ("max", "nearest")


def residual_block_types() -> tuple[type, ...]:
    """The residual block classes handled: torchvision and timm BasicBlock / Bottleneck."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    types: list[type] = [BasicBlock, Bottleneck]
    try:
        from timm.models.resnet import BasicBlock as TimmBasic
        from timm.models.resnet import Bottleneck as TimmBottleneck
    except ImportError:  # timm is optional
        return tuple(types)
    return (*types, TimmBasic, TimmBottleneck)


class MaskState:
    """The mask shared by a mask point and its blocks during one forward.

    ``given``: a binary (B, h, w) mask set by :func:`masking` (None: read the
    ERSM layer). ``mask``: the mask at the grid of the last block run (B, H, W),
    bool. ``fill``: in eval mode, the (C,) vector every masked position holds
    (zero at the mask point, the shortcut of it after a striding block).
    ``pool``: one of :data:`POOLS`. ``block_gradient`` (ours): send each
    block's straight-through gradient to the ERSM layer; ``graph_mask``: in
    training then, the layer's executed keep (B, H, W) with its graph, at the
    grid of the last block run (None otherwise).
    """

    def __init__(self, pool: str = "max", block_gradient: bool = False) -> None:
        self.pool = pool
        self.block_gradient = block_gradient
        self.given: Tensor | None = None
        self.mask: Tensor | None = None
        self.fill: Tensor | None = None
        self.graph_mask: Tensor | None = None

    def __getstate__(self) -> dict:
        # mask, fill and graph_mask belong to one forward (graph_mask holds its graph,
        # which cannot be copied): a copied or pickled model starts without them
        return {**self.__dict__, "mask": None, "fill": None, "graph_mask": None}


def block_stride(block: nn.Module) -> int:
    """The stride of a residual block: that of its downsample, else 1."""
    down = getattr(block, "downsample", None)
    if down is None:
        return 1
    convs = [m for m in down.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in down.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    stride = 1
    for m in convs + pools:
        s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
        stride *= int(s[0])
    return stride


def pool_mask(mask: Tensor, stride: int, size: tuple[int, int], pool: str = "max") -> Tensor:
    """Mask (B, H, W) bool at a block's output grid ``size``.

    ``pool="max"``: max-pooled, kernel = stride, ceil mode (an output position is
    kept when any cell of its window is). ``pool="nearest"`` (ours):
    ``mask[:, ::stride, ::stride]``, the top-left cell of each window.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {list(POOLS)}, but got {pool!r}")
    if stride > 1 and pool == "max":
        mask = F.max_pool2d(mask[:, None].float(), stride, stride, ceil_mode=True)[:, 0] > 0
    elif stride > 1:
        mask = mask[:, ::stride, ::stride]
    if tuple(mask.shape[-2:]) != tuple(size):
        raise ValueError(
            f"the mask pooled by stride {stride} has grid {tuple(mask.shape[-2:])}, but the "
            f"block outputs {tuple(size)}; the masked-residual semantics needs them equal"
        )
    return mask


def nearest_refusal(block: nn.Module) -> str | None:
    """Why ``pool="nearest"`` is not exact for a striding ``block`` (None: it is).

    Masked outputs copy ``downsample(x)``; they hold the masked vector only if
    the downsample reads, at output o, the single input cell stride·o, which
    ``nearest`` keeps or masks with o. That holds for a 1x1 convolution with
    stride s, no padding and no dilation, followed by per-position layers
    (BatchNorm, Identity): torchvision's ``downsample`` and timm's default.
    An average pool first (timm's ``avg_down``), a larger kernel or padding
    reads the whole window and is refused.
    """
    down = getattr(block, "downsample", None)
    if down is None or block_stride(block) == 1:
        return None
    parts = list(down.children()) if isinstance(down, nn.Sequential) else [down]
    first, rest = parts[0], parts[1:]
    if not isinstance(first, nn.Conv2d):
        return f"the downsample starts with {type(first).__name__}, not a 1x1 convolution"
    if first.kernel_size != (1, 1) or first.padding != (0, 0) or first.dilation != (1, 1):
        return (f"the downsample convolution has kernel {first.kernel_size}, padding "
                f"{first.padding}, dilation {first.dilation} (needs 1x1, 0, 1)")
    per_position = (nn.BatchNorm2d, nn.Identity)
    others = [type(m).__name__ for m in rest if not isinstance(m, per_position)]
    if others:
        return f"the downsample has {others} after its convolution (needs BatchNorm2d only)"
    return None


class MaskPoint(nn.Module):
    """Runs ``module`` and applies the mask: output ``x ⊙ M``, and M handed to the blocks.

    The mask is the one :func:`masking` gives, else the keep map of an ERSM
    layer at the end of ``module`` (``module`` is the layer or an
    ``InsertedAfter`` ending with one), which must then be binary (forced,
    or ``hard_inference`` in eval mode).
    """

    def __init__(self, module: nn.Module, state: MaskState) -> None:
        super().__init__()
        self.module = module
        self.state = state

    def _ersm(self) -> EnergyMask2d | None:
        if isinstance(self.module, EnergyMask2d):
            return self.module
        if isinstance(self.module, InsertedAfter) and isinstance(self.module.layer, EnergyMask2d):
            return self.module.layer
        return None

    def forward(self, *args, **kwargs) -> Tensor:
        x = self.module(*args, **kwargs)
        mask, ersm = self.state.given, self._ersm()
        self.state.graph_mask = None
        if mask is None:
            if ersm is None or ersm.last_keep is None:
                raise ValueError(
                    "a masked-residual model needs a mask: give one with "
                    "energymask.masked_residual.masking(model, mask), or put the mask point "
                    "after an EnergyMask2d layer"
                )
            mask = ersm.last_keep
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError(
                    "the ERSM layer's keep map is not binary; force a binary mask "
                    "(energymask.ersm.forcing) or use hard_inference=True in eval mode"
                )
            p = ersm.token_size
            mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)
            graph = ersm.executed_keep
            if self.state.block_gradient and self.training and graph is not None:
                if graph.requires_grad:
                    graph = graph.repeat_interleave(p, 1).repeat_interleave(p, 2)
                    self.state.graph_mask = graph.to(x.dtype)
        if mask.dim() != 3 or mask.shape[0] != x.shape[0] or mask.shape[1:] != x.shape[2:]:
            raise ValueError(
                f"mask must have shape (B, H, W) = {(x.shape[0], *x.shape[2:])}, "
                f"but got {tuple(mask.shape)}"
            )
        mask = mask.to(device=x.device) != 0
        self.state.mask = mask
        self.state.fill = None if self.training else x.new_zeros(x.shape[1])
        if self.state.given is None:
            # the ERSM layer's output is x ⊙ M already; multiplying again by the detached
            # M would zero the straight-through gradient of every closed token
            return x
        return x * mask[:, None].to(x.dtype)


class MaskedBlock(nn.Module):
    """``where(M_b, block(x), s(x))``: the block's branch counts only where the mask is one."""

    def __init__(self, block: nn.Module, state: MaskState) -> None:
        super().__init__()
        self.block = block
        self.state = state
        self.stride = block_stride(block)

    def shortcut(self, x: Tensor) -> Tensor:
        down = getattr(self.block, "downsample", None)
        return x if down is None else down(x)

    def next_mask(self, out_size: tuple[int, int]) -> Tensor:
        if self.state.mask is None:
            raise ValueError("a MaskedBlock ran before its MaskPoint: no mask is set")
        mask = pool_mask(self.state.mask, self.stride, out_size, self.state.pool)
        self.state.mask = mask
        graph = self.state.graph_mask
        if graph is not None and self.stride > 1:
            if self.state.pool == "max":  # the gradient reaches the first kept cell of a window
                graph = F.max_pool2d(graph[:, None], self.stride, self.stride, ceil_mode=True)[:, 0]
            else:
                graph = graph[:, :: self.stride, :: self.stride]
            self.state.graph_mask = graph
        return mask

    def next_fill(self) -> Tensor | None:
        """The vector masked positions hold after this block (eval mode; docs/design.md §11)."""
        fill = self.state.fill
        if fill is not None and getattr(self.block, "downsample", None) is not None:
            s = self.stride
            image = fill.view(1, -1, 1, 1).expand(1, -1, s, s).contiguous()
            fill = self.block.downsample(image)[0, :, 0, 0]
        self.state.fill = fill
        return fill

    def block_and_shortcut(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(block(x), s(x))``, the downsample run once: its output is taken inside the block.

        (Running it twice would cost a second 1x1 convolution and, in training,
        update its BatchNorm's running statistics twice per step.)
        """
        down = getattr(self.block, "downsample", None)
        if down is None:
            return self.block(x), x
        seen: list[Tensor] = []
        handle = down.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            out = self.block(x)
        finally:
            handle.remove()
        return out, seen[0] if len(seen) == 1 else down(x)

    def forward(self, x: Tensor) -> Tensor:
        out, short = self.block_and_shortcut(x)
        mask = self.next_mask(tuple(out.shape[-2:]))
        self.next_fill()
        result = out if bool(mask.all()) else torch.where(mask[:, None], out, short)
        graph = self.state.graph_mask
        if graph is not None:  # ours: zero in value, the straight-through gradient of M_b
            result = result + (graph - graph.detach())[:, None] * (out - short)
        return result


def masked_residual(
    model: nn.Module, after: str, until: str | None = None, pool: str = "max",
    block_gradient: bool = False,
) -> nn.Module:
    """Make ``model`` a masked-residual model, in place; returns it.

    Args:
        model: a network with residual blocks (torchvision or timm ResNet).
        after: name of the module whose output is masked (e.g. ``"layer2"``, or
            an ``InsertedAfter`` holding an ERSM layer).
        until: name of the last module whose blocks are masked (e.g. ``"layer3"``);
            None: every residual block after ``after`` (up to the head).
        pool: the mask at a striding block's grid, one of :data:`POOLS`:
            ``"max"`` (the issue's: max-pooled) or ``"nearest"`` (ours: the
            top-left cell of each window; refused for a block whose downsample
            reads more than that cell, see :func:`nearest_refusal`). Default: "max".
        block_gradient: ours: in training, a hard ERSM layer at ``after`` also
            gets each block's straight-through gradient (module docstring);
            the forward is unchanged. Default: False (the mask learns from
            ``x ⊙ M`` at the mask point only).

    The module ``after`` becomes a :class:`MaskPoint`, every residual block after
    it (up to ``until``) a :class:`MaskedBlock`; weights move under
    ``<block>.block.*`` and ``<after>.module.*``. Raises ValueError when a name
    is missing, no block follows, or a module with parameters that is not in a
    block lies between the mask and the last block (its output would not be
    exact at masked positions).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {list(POOLS)}, but got {pool!r}")
    if not isinstance(block_gradient, bool):
        raise TypeError(f"block_gradient must be True or False, but got {block_gradient!r}")
    names = [n for n, _ in model.named_modules()]
    for arg, name in (("after", after), ("until", until)):
        if name is not None and name not in names:
            raise ValueError(f"{arg} must name a submodule of the model, but got {name!r}")
    if any(isinstance(m, (MaskPoint, MaskedBlock)) for m in model.modules()):
        raise ValueError("model is already a masked-residual model")
    types = residual_block_types()
    start = names.index(after) + len([n for n in names if n.startswith(after + ".")]) + 1
    stop = len(names)
    if until is not None:
        stop = names.index(until) + 1 + len([n for n in names if n.startswith(until + ".")])
    modules = dict(model.named_modules())
    blocks: list[str] = []
    strays: list[str] = []
    for name in names[start:stop]:
        if any(name.startswith(b + ".") for b in blocks):
            continue
        module = modules[name]
        if isinstance(module, types):
            blocks.append(name)
        elif any(True for _ in module.parameters(recurse=False)) and not isinstance(
            module, nn.Linear
        ):
            strays.append(name)
    if not blocks:
        raise ValueError(
            f"no residual block ({', '.join(t.__name__ for t in types)}) after {after!r}"
        )
    last = names.index(blocks[-1])
    strays = [s for s in strays if names.index(s) < last]
    if strays:
        raise ValueError(
            f"modules with parameters outside residual blocks lie between {after!r} and the last "
            f"masked block: {strays}; give until= before them"
        )
    if pool == "nearest":
        refused = {n: why for n in blocks if (why := nearest_refusal(modules[n])) is not None}
        if refused:
            raise ValueError(
                f"pool='nearest' is not exact for these blocks: {refused}; use pool='max'"
            )
    state = MaskState(pool, block_gradient)
    for name in blocks:
        _set_submodule(model, name, MaskedBlock(modules[name], state).train(modules[name].training))
    point = MaskPoint(modules[after], state).train(modules[after].training)
    _set_submodule(model, after, point)
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def mask_point(model: nn.Module) -> MaskPoint:
    """The model's :class:`MaskPoint` (ValueError if it has none)."""
    points = [m for m in model.modules() if isinstance(m, MaskPoint)]
    if len(points) != 1:
        raise ValueError(
            f"model must have exactly one MaskPoint (see masked_residual), but has {len(points)}"
        )
    return points[0]


@contextmanager
def masking(model: nn.Module, mask: Tensor | None) -> Iterator[nn.Module]:
    """Give a masked-residual model a binary mask (B, H, W) inside a ``with`` block.

    ``mask`` is at the grid of the mask point's output (1 keep, 0 masked);
    None: the ERSM layer's keep map. The previous mask comes back after the block.
    """
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(
                f"mask must be a tensor (B, H, W) or None, but got {type(mask).__name__}"
            )
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask values must be in {0, 1}, but got other values")
    state = mask_point(model).state
    saved = state.given
    state.given = mask
    try:
        yield model
    finally:
        state.given = saved


__all__ = ["POOLS", "MaskPoint", "MaskedBlock", "mask_point", "masked_residual", "masking",
           "nearest_refusal", "pool_mask"]
