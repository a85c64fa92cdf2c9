"""Sparse execution of a masked-residual model: residual branches run only where the mask is one.

DynConv (Verelst & Tuytelaars, CVPR 2020, https://arxiv.org/abs/1912.03203):
token gather, the first convolution of a block on the dilated mask so that the
3x3 sees exact inputs. Semantics in :mod:`energymask.masked_residual` and
docs/design.md §11. Per block (eval mode, BatchNorm folded into the convs),
activations channels-last (B, H, W, C), ``kept`` = the N positions where the
block's output mask is one:

    Bottleneck:  h1 = relu(x[D] W1 + b1)        D = kept dilated by the 3x3 (at x's grid)
                 h2 = relu(im2col3x3(h1)[kept] W2 + b2)
                 y  = relu(h2 W3 + b3 + s(x)[kept])
    BasicBlock:  h1 = relu(im2col3x3(x)[D] W1 + b1)
                 y  = relu(im2col3x3(h1)[kept] W2 + b2 + s(x)[kept])
    out = x (or the fill vector where the block strides), with y scattered at kept.

A block that cannot run this way (other activations, grouped or dilated
convolutions, attention, anti-aliasing, an average-pool downsample) runs dense,
named with its reason in ``model.sparse_report`` and a warning. Ours: a block
whose kept share is at or above a measured threshold (:data:`DENSE_THRESHOLD`)
runs the dense masked computation for that batch, where sparse is slower.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask.kernels.sparse_rows import gather_rows, scatter_rows
from energymask.masked_residual import MaskedBlock, MaskPoint, masked_residual


class FoldedConv:
    """A conv with its BatchNorm folded: (k·k·C_in, C_out) matrix, channels-last im2col."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            k = conv.kernel_size[0]
            self.matrix = (
                weight.permute(2, 3, 1, 0).reshape(k * k * conv.in_channels, -1).contiguous()
            )
            self.bias = bias.contiguous()
            self.weight = weight.contiguous()  # (C_out, C_in, k, k), for the dense path
        self.kernel = k
        self.stride = conv.stride[0]
        self.padding = conv.padding[0]


def _refusal(conv: nn.Module, bn: nn.Module) -> str | None:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return f"{type(conv).__name__}/{type(bn).__name__} is not Conv2d + BatchNorm2d"
    k = conv.kernel_size
    if conv.groups != 1 or conv.dilation != (1, 1):
        return "grouped or dilated convolution"
    if k[0] != k[1] or k[0] not in (1, 3) or conv.padding != (k[0] // 2, k[0] // 2):
        return f"convolution {k} with padding {conv.padding} (only 1x1 and padded 3x3)"
    if conv.stride[0] != conv.stride[1] or conv.padding_mode != "zeros":
        return "unequal strides or non-zero padding mode"
    if bn.running_mean is None:
        return "BatchNorm without running statistics"
    return None


def _plan(block: nn.Module) -> tuple[list[tuple[nn.Module, nn.Module]], str | None]:
    """The (conv, bn) pairs of the branch and the reason it cannot run sparsely (None: it can)."""
    names = ["1", "2", "3"] if hasattr(block, "conv3") else ["1", "2"]
    pairs = [(getattr(block, f"conv{n}"), getattr(block, f"bn{n}")) for n in names]
    acts = [getattr(block, "relu", None)] + [getattr(block, f"act{n}", None) for n in names]
    if not all(a is None or isinstance(a, nn.ReLU) for a in acts):
        return pairs, "activation other than ReLU"
    for attr in ("se", "aa", "drop_block", "drop_path"):
        module = getattr(block, attr, None)
        if module is not None and not isinstance(module, nn.Identity):
            if attr in ("drop_block", "drop_path"):
                continue  # identity in eval mode
            return pairs, f"{attr} layer ({type(module).__name__})"
    for conv, bn in pairs:
        if (why := _refusal(conv, bn)) is not None:
            return pairs, why
    kernels = [c.kernel_size[0] for c, _ in pairs]
    if kernels not in ([1, 3, 1], [3, 3]) or any(
        c.stride[0] != 1 for c, _ in pairs[1:] if c.kernel_size[0] == 1
    ):
        return pairs, f"branch kernels {kernels} with strides {[c.stride[0] for c, _ in pairs]}"
    if kernels == [3, 3] and pairs[1][0].stride[0] != 1:
        return pairs, "second 3x3 strides"
    if kernels == [1, 3, 1] and pairs[0][0].stride[0] != 1:
        return pairs, "the first 1x1 strides"
    down = getattr(block, "downsample", None)
    if down is not None:
        parts = list(down.children()) if isinstance(down, nn.Sequential) else [down]
        if len(parts) != 2 or (why := _refusal(parts[0], parts[1])) is not None:
            return pairs, "downsample is not a 1x1 conv + BatchNorm"
        if parts[0].kernel_size != (1, 1):
            return pairs, "downsample is not a 1x1 conv + BatchNorm"
    return pairs, None


def _flat(rows: Tensor, grid: tuple[int, int], pad: int) -> Tensor:
    """Row numbers of positions ``rows`` (N, 3) (b, i, j) in a (B, H+2·pad, W+2·pad, C) tensor."""
    hp, wp = grid[0] + 2 * pad, grid[1] + 2 * pad
    return rows[:, 0] * (hp * wp) + (rows[:, 1] + pad) * wp + (rows[:, 2] + pad)


def _gather_conv(x_pad: Tensor, rows: Tensor, conv: FoldedConv) -> Tensor:
    """Conv outputs at N positions ``rows`` (N, 3) (b, i, j) of ``x_pad`` (B, H+2p, W+2p, C)."""
    b, hp, wp, c = x_pad.shape
    s, k = conv.stride, conv.kernel
    flat = x_pad.reshape(-1, c)
    base = rows[:, 0] * (hp * wp) + rows[:, 1] * s * wp + rows[:, 2] * s
    if k == 1:
        taps = gather_rows(flat, base)
    else:
        offsets = torch.arange(k, device=x_pad.device)
        offsets = (offsets[:, None] * wp + offsets[None, :]).reshape(-1)
        taps = gather_rows(flat, (base[:, None] + offsets).reshape(-1)).reshape(len(rows), -1)
    return torch.addmm(conv.bias, taps, conv.matrix)


def dilated_mask(mask: Tensor, stride: int, in_size: tuple[int, int]) -> Tensor:
    """Positions (B, H, W) of a padded 3x3 conv's input grid that the outputs where ``mask`` read.

    Output o reads inputs stride·o − 1 .. stride·o + 1: put the mask at stride·o, max-pool 3x3.
    """
    b, ho, wo = mask.shape
    grid = mask.new_zeros((b, 1, ho * stride, wo * stride), dtype=torch.float32)
    grid[:, 0, ::stride, ::stride] = mask.float()
    return F.max_pool2d(grid, 3, 1, 1)[:, 0, : in_size[0], : in_size[1]] > 0


#: Ours: a stride-1 block runs dense (the masked computation, exact too) when the
#: kept share of its output grid over the batch is at least this. Measured with
#: ``python benchmarks/bench_sparse.py --crossover`` (results/sparse_crossover.json,
#: ResNet-50 224 px, 1 thread, blob masks): sparse / dense masked time of the
#: stride-1 bottlenecks at batch 32 crosses 1 between 0.6 and 0.7 (layer3.1,
#: 14x14: 0.97 at 0.6, 1.07 at 0.7, 1.17 at 0.8, 1.46 at 1.0) and near 0.9
#: (layer4.1, 7x7: 0.94 at 0.8, 0.98 at 0.9, 1.13 at 1.0); at batch 1 sparse was
#: not slower below 0.9 (noisy). 0.8 splits the two: docs/design.md §11.
DENSE_THRESHOLD = 0.8
#: Ours: the same for a striding block. Its sparse path also computes the
#: downsample at kept positions only; measured (same run) it was faster than dense
#: up to share 0.9 (layer3.0 batch 32: 0.94 at 0.9, 1.15 at 1.0; layer4.0: 0.98 at
#: 1.0), so it runs dense only when every position is kept.
STRIDING_DENSE_THRESHOLD = 1.0


class SparseBlock(nn.Module):
    """A :class:`MaskedBlock` run at its mask's positions only (eval; dense in training).

    ``dense_threshold`` (ours): when the kept share of the block's output grid,
    over the whole batch, is at least this, the block runs the dense masked
    computation ``where(M_b, block(x), s(x))`` instead (sparse execution is then
    slower than dense; :data:`DENSE_THRESHOLD`). None: always sparse. ``last_ran_dense``
    says what the last eval forward did.
    """

    def __init__(self, masked: MaskedBlock, dense_threshold: float | None = None) -> None:
        super().__init__()
        self.masked = masked
        self.dense_threshold = dense_threshold
        self.last_ran_dense = False
        self.pairs, _ = _plan(masked.block)
        self._folded: list[FoldedConv] | None = None
        self._versions: tuple[int, ...] = ()

    def _fold(self) -> list[FoldedConv]:
        tensors = [
            t
            for m in self.masked.block.modules()
            for t in (*m.parameters(False), *m.buffers(False))
        ]
        versions = tuple(t._version for t in tensors) + tuple(id(t) for t in tensors)
        if self._folded is None or versions != self._versions:
            folded = [FoldedConv(c, b) for c, b in self.pairs]
            down = getattr(self.masked.block, "downsample", None)
            if down is not None:
                folded.append(FoldedConv(*list(down.children())))
            self._folded, self._versions = folded, versions
        return self._folded

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.masked(x)
        masked = self.masked
        folded = self._fold()
        branch = folded[: len(self.pairs)]
        down = folded[len(self.pairs)] if len(folded) > len(self.pairs) else None
        s = masked.stride
        b, c, h, w = x.shape
        ho, wo = -(-h // s), -(-w // s)
        mask = masked.next_mask((ho, wo))
        fill = masked.state.fill  # the vector at masked positions (docs/design.md §11)
        if down is not None:  # downsample(v) with the folded 1x1: no convolution call
            fill = torch.addmm(down.bias[None], fill[None].to(x.dtype), down.matrix)[0]
            masked.state.fill = fill
        x_cl = x.permute(0, 2, 3, 1)
        if not x_cl.is_contiguous():
            x_cl = x_cl.contiguous()
        threshold = self.dense_threshold
        self.last_ran_dense = threshold is not None and mask.float().mean().item() >= threshold
        if self.last_ran_dense:
            return self._dense(x.contiguous(), mask, branch, down)
        c_out = branch[-1].matrix.shape[1]
        if down is None:
            out = x_cl.clone()
        else:
            out = fill.expand(b, ho, wo, c_out).contiguous()
        kept = mask.nonzero()
        if len(kept):
            first = branch[0]
            need = dilated_mask(mask, branch[1].stride, (ho, wo) if len(branch) == 2 else (h, w))
            rows = need.nonzero()
            if len(branch) == 3:  # Bottleneck: 1x1 at need, 3x3 at kept, 1x1
                h1 = _gather_conv(x_cl, rows, first).relu_()
                grid = (h, w)
            else:  # BasicBlock: 3x3 (strided) at need, 3x3 at kept
                h1 = _gather_conv(F.pad(x_cl, (0, 0, 1, 1, 1, 1)), rows, first).relu_()
                grid = (ho, wo)
            buf = h1.new_zeros(b, grid[0] + 2, grid[1] + 2, h1.shape[1])
            scatter_rows(buf.view(-1, h1.shape[1]), _flat(rows, grid, 1), h1)
            y = _gather_conv(buf, kept, branch[1])
            if len(branch) == 3:
                y = torch.addmm(branch[2].bias, y.relu_(), branch[2].matrix)
            if down is None:
                y += gather_rows(x_cl.reshape(-1, c), _flat(kept, (h, w), 0))
            else:
                y += _gather_conv(x_cl, kept, down)
            scatter_rows(out.view(-1, c_out), _flat(kept, (ho, wo), 0), y.relu_())
        return out.permute(0, 3, 1, 2)


    @staticmethod
    def _dense(x: Tensor, mask: Tensor, branch: list[FoldedConv], down: FoldedConv | None
               ) -> Tensor:
        """The dense masked computation with the folded convolutions (NCHW ``x``)."""
        h = x
        for i, conv in enumerate(branch):
            h = F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding)
            if i < len(branch) - 1:
                h = h.relu_()
        short = x if down is None else F.conv2d(x, down.weight, down.bias, down.stride)
        out = (h + short).relu_()
        return out if bool(mask.all()) else torch.where(mask[:, None], out, short)


def sparsify(
    model: nn.Module,
    warn: bool = True,
    dense_threshold: float | None = DENSE_THRESHOLD,
    striding_dense_threshold: float | None = STRIDING_DENSE_THRESHOLD,
) -> nn.Module:
    """A copy of a masked-residual model that computes its blocks only where the mask is one.

    Args:
        model: a model made by :func:`energymask.masked_residual.masked_residual`.
        warn: warn once naming the blocks that run dense. Default: True.
        dense_threshold: ours; a stride-1 block whose kept share (its output
            grid, the whole batch) is at least this runs the dense masked
            computation, faster there (measured, :data:`DENSE_THRESHOLD`);
            None: always sparse. Default: :data:`DENSE_THRESHOLD` (0.8).
        striding_dense_threshold: the same for striding blocks. Default:
            :data:`STRIDING_DENSE_THRESHOLD` (1.0: dense only when all is kept).

    Returns:
        A deep copy in which every :class:`MaskedBlock` that can run sparsely is a
        :class:`SparseBlock` (eval mode: BatchNorm folded, branch computed at the
        kept positions; training mode: the dense masked computation). The copy's
        ``sparse_report`` maps each block to ``"sparse"`` or the reason it runs dense.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}")
    for name, value in (("dense_threshold", dense_threshold),
                        ("striding_dense_threshold", striding_dense_threshold)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1
        ):
            raise ValueError(f"{name} must be None or in (0, 1], but got {value!r}")
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, MaskedBlock)}
    if not blocks:
        raise ValueError(
            "model has no MaskedBlock: make it a masked-residual model first "
            "(energymask.masked_residual.masked_residual(model, after=...))"
        )
    model = copy.deepcopy(model)
    report: dict[str, str] = {}
    for name, masked in [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedBlock)]:
        _, why = _plan(masked.block)
        if why is None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            threshold = dense_threshold if masked.stride == 1 else striding_dense_threshold
            block = SparseBlock(masked, threshold).train(masked.training)
            setattr(parent, child, block)
            report[name] = "sparse"
        else:
            report[name] = f"dense: {why}"
    model.sparse_report = report
    dense = {n: r for n, r in report.items() if r != "sparse"}
    if dense and warn:
        warnings.warn(f"sparsify: these blocks run dense: {dense}", stacklevel=2)
    return model


def sparse_copy(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """``(sparse model, its ERSM layer)``: a sparse masked-residual copy of ``model``.

    The mask point is the ERSM layer named ``layer``: its binary (forced or
    hard) keep map masks every residual block after it. ``model`` is unchanged.
    """
    masked = masked_residual(copy.deepcopy(model), layer)
    sparse = sparsify(masked)
    point = sparse.get_submodule(layer)
    if not isinstance(point, MaskPoint):
        raise ValueError(f"layer must name the mask point, but {layer!r} is {type(point).__name__}")
    return sparse, point.module


__all__ = ["DENSE_THRESHOLD", "STRIDING_DENSE_THRESHOLD", "SparseBlock", "dilated_mask",
           "sparse_copy", "sparsify"]
