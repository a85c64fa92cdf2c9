"""Fused Triton kernels for the ERSM token energy (docs/design.md §3, §5).

Devynck et al., "Energy-Regularized Spatial Masking", IJCAI 2026, arXiv 2604.06893.
Must match :func:`energymask.kernels.reference.ersm_energy`.

Forward, per token i of a (B, D, h, w) token map (D = C·p², p > 1 by
``pixel_unshuffle`` in the wrapper), n_i = ‖x_i‖, r_i = 1 / (n_i + eps)::

    x̂_i = x_i r_i,  z_i = w·x̂_i + b_i,  s_i = r_i Σ_{j∈N8(i)} r_j ⟨x_i, x_j⟩
    keep_i = σ(−z_i / T),  U_i = λ softplus(z_i),  P_i = γ softplus(s_i),  out_i = x_i keep_i

Backward, with upstream g_out, g_z, g_keep, g_U, g_P (None -> 0)::

    g_z̃_i = g_z_i + λ σ(z_i) g_U_i − keep_i (1 − keep_i) / T · (g_keep_i + Σ_c g_out_ic x_ic)
    g_s_i = γ σ(s_i) g_P_i,   c_ij = (g_s_i + g_s_j) r_j      (s is symmetric in i, j)
    G_i   = dL/dx̂_i = g_z̃_i w + Σ_{j∈N8(i)} c_ij x_j
    G·x_i = g_z̃_i (w·x_i) + Σ_j c_ij ⟨x_i, x_j⟩
    dx_i  = r_i G_i − (G·x_i) x_i r_i² / n_i  [0 where n_i = 0]  +  keep_i g_out_i
    dw    = Σ_{b,i} g_z̃_i r_i x_i,   db = Σ g_z̃ (over b, or over everything for a scalar bias)

(the normalisation Jacobian: ∂x̂/∂x = r I − x xᵀ r² / n).

Two launches each way (docs/design.md §5, kernels v2). A program owns
BLOCK_S consecutive tokens (row-major) of one sample and loops over channel
chunks of BLOCK_D, one reduction per chunk: pass 1 reduces over all channels
per token (forward: ‖x‖ and w·x, then r, z, keep, U; backward: g_out·x, w·x and
⟨x_i, Σ_j c_ij x_j⟩, then g_z̃ and coef); pass 2 (forward: Σ_j r_j ⟨x_i, x_j⟩
and out; backward: dx and dw partials) sums the 8 neighbour tiles (shifted
masked loads, ``other=0`` off the grid, from cache) with per-neighbour weights
into one tile, and splits its channel chunks over ``n_split`` programs. The
kernels take the channel and token strides: NCHW and channels-last maps run in
place, loads along the contiguous axis. One flat grid axis (any map size). The
sample's base offset is int64, offsets inside a sample int32 (D·h·w < 2³¹,
checked); accumulation float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import guarded, interpreting, layout_class
from .launch import launch
from .reference import EPS as _EPS
from .reference import ErsmEnergy

# A module global read inside @triton.jit must be a constexpr (the compiler refuses
# plain globals; the interpreter does not notice).
EPS = tl.constexpr(_EPS)


@triton.jit
def _softplus(v):
    """log(1 + e^v) without overflow (v > 20) or lost precision (v < -15: e^v)."""
    e = tl.exp(tl.minimum(v, 20.0))
    return tl.where(v > 20.0, v, tl.where(v < -15.0, e, tl.log(1.0 + e)))


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _neighbour(s, s_ok, k, H, W):
    """Flat index and in-grid flag of neighbour k (0..8, 4 = centre) of the tokens s."""
    nr = s // W + (k // 3 - 1)
    nc = s % W + (k % 3 - 1)
    return nr * W + nc, s_ok & (nr >= 0) & (nr < H) & (nc >= 0) & (nc < W)


@triton.jit
def _program(n_tiles, n_split):
    """(sample int64, token tile, channel split) of this program, from one flat grid axis.

    Axis 0 holds up to 2³¹ − 1 programs (axes 1 and 2 only 65,535): any map size.
    """
    pid = tl.program_id(0)
    split = pid % n_split
    tile = (pid // n_split) % n_tiles
    return (pid // n_split // n_tiles).to(tl.int64), tile, split


@triton.jit
def _ersm_fwd_tokens(
    x_ptr, w_ptr, b_ptr, r_ptr, z_ptr, keep_ptr, u_ptr,
    D, H, W, stride_d, stride_s, n_tiles, lam, inv_t,
    BIAS_PER_POS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Forward pass 1: ‖x_i‖ and w·x_i over all channels, then r, z, keep and U."""
    b, t, _ = _program(n_tiles, 1)
    HW = H * W
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    sq = tl.zeros([BLOCK_S], dtype=ACC)
    wx = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        xv = tl.load(xb_ptr + s[:, None] * stride_s + d[None, :] * stride_d,
                     mask=s_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)  # fmt: skip
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        sq += tl.sum(xv * xv, axis=1)
        wx += tl.sum(xv * wv[None, :], axis=1)
    r = 1.0 / (tl.sqrt(sq) + EPS)
    if BIAS_PER_POS:
        bias = tl.load(b_ptr + s, mask=s_ok, other=0.0).to(ACC)
    else:
        bias = tl.load(b_ptr).to(ACC)
    z = wx * r + bias
    o = b * HW + s
    tl.store(r_ptr + o, r, mask=s_ok)
    tl.store(z_ptr + o, z, mask=s_ok)
    tl.store(keep_ptr + o, _sigmoid(-z * inv_t), mask=s_ok)
    tl.store(u_ptr + o, lam * _softplus(z), mask=s_ok)


@triton.jit
def _weighted_neighbours(xb_ptr, p_ptr, q_ptr, c, s, s_ok, d, d_ok, H, W, stride_d, stride_s,
                         HAS_Q: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_D: tl.constexpr):  # fmt: skip
    """Σ_{j∈N8(i)} (c_i p_j + q_j) x_j on a (BLOCK_S, BLOCK_D) chunk (q = 0 without HAS_Q).

    p and q are per-token maps of the sample; each neighbour tile is a shifted,
    masked load (0 off the grid): the halo rows were just read by the
    neighbouring programs and come from cache.
    """
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=ACC)
    for k in tl.static_range(9):
        if k != 4:
            j, ok = _neighbour(s, s_ok, k, H, W)
            a = c * tl.load(p_ptr + j, mask=ok, other=0.0).to(ACC)
            if HAS_Q:
                a += tl.load(q_ptr + j, mask=ok, other=0.0).to(ACC)
            xj = tl.load(xb_ptr + j[:, None] * stride_s + d[None, :] * stride_d,
                         mask=ok[:, None] & d_ok[None, :], other=0.0).to(ACC)  # fmt: skip
            acc += xj * a[:, None]
    return acc


@triton.jit
def _ersm_fwd_pairs(
    x_ptr, r_ptr, keep_ptr, simp_ptr, out_ptr,
    B, D, H, W, stride_d, stride_s, n_tiles, n_split,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Forward pass 2: out = x keep and this split's share of Σ_j r_j ⟨x_i, x_j⟩.

    Per channel chunk the centre tile is loaded once, the 8 neighbour tiles are
    summed with weights r_j into one tile, and one reduction gives the dots.
    The splits own interleaved channel chunks; their partial sums go to
    ``simp`` (n_split, B, h, w), added in torch.
    """
    b, t, split = _program(n_tiles, n_split)
    HW = H * W
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    keep = tl.load(keep_ptr + b * HW + s, mask=s_ok, other=0.0).to(ACC)
    one = tl.full([BLOCK_S], 1.0, dtype=ACC)
    sim = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(split * BLOCK_D, D, n_split * BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        off = s[:, None] * stride_s + d[None, :] * stride_d
        ok2 = s_ok[:, None] & d_ok[None, :]
        xv = tl.load(xb_ptr + off, mask=ok2, other=0.0).to(ACC)
        nb = _weighted_neighbours(xb_ptr, r_ptr + b * HW, r_ptr, one, s, s_ok, d, d_ok, H, W,
                                  stride_d, stride_s, False, ACC, BLOCK_S, BLOCK_D)  # fmt: skip
        sim += tl.sum(xv * nb, axis=1)
        tl.store(out_ptr + b * D * HW + off, (xv * keep[:, None]).to(out_ptr.dtype.element_ty),
                 mask=ok2)  # fmt: skip
    tl.store(simp_ptr + (split * B + b) * HW + s, sim, mask=s_ok)


@triton.jit
def _ersm_bwd_tokens(
    x_ptr, go_ptr, w_ptr, r_ptr, z_ptr, keep_ptr, gs_ptr, gsr_ptr, gz_ptr, gk_ptr, gu_ptr,
    gzt_ptr, coef_ptr,
    D, H, W, stride_d, stride_s, n_tiles, lam, inv_t,
    HAS_GO: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Backward pass 1, per token: g_z̃ and coef = (G·x) r² / n over all channels.

    G·x_i = g_z̃_i (w·x_i) + ⟨x_i, Σ_j c_ij x_j⟩, c_ij = (g_s_i + g_s_j) r_j.
    """
    b, t, _ = _program(n_tiles, 1)
    HW = H * W
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    gob_ptr = go_ptr + b * D * HW
    o = b * HW + s
    gs = tl.load(gs_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gox = tl.zeros([BLOCK_S], dtype=ACC)
    wx = tl.zeros([BLOCK_S], dtype=ACC)
    pair = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        off = s[:, None] * stride_s + d[None, :] * stride_d
        ok2 = s_ok[:, None] & d_ok[None, :]
        xv = tl.load(xb_ptr + off, mask=ok2, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        wx += tl.sum(xv * wv[None, :], axis=1)
        if HAS_GO:
            gox += tl.sum(xv * tl.load(gob_ptr + off, mask=ok2, other=0.0).to(ACC), axis=1)
        nb = _weighted_neighbours(xb_ptr, r_ptr + b * HW, gsr_ptr + b * HW, gs, s, s_ok, d,
                                  d_ok, H, W, stride_d, stride_s, True, ACC, BLOCK_S,
                                  BLOCK_D)  # fmt: skip
        pair += tl.sum(xv * nb, axis=1)
    r = tl.load(r_ptr + o, mask=s_ok, other=1.0).to(ACC)
    z = tl.load(z_ptr + o, mask=s_ok, other=0.0).to(ACC)
    keep = tl.load(keep_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gz = tl.load(gz_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gk = tl.load(gk_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gu = tl.load(gu_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gzt = gz + lam * _sigmoid(z) * gu - keep * (1.0 - keep) * inv_t * (gk + gox)
    gx = gzt * wx + pair
    n = 1.0 / r - EPS
    coef = tl.where(n > 0.0, gx * r * r / tl.where(n > 0.0, n, 1.0), 0.0)
    tl.store(gzt_ptr + o, gzt, mask=s_ok)
    tl.store(coef_ptr + o, coef, mask=s_ok)


@triton.jit
def _ersm_bwd_dx(
    x_ptr, go_ptr, w_ptr, r_ptr, keep_ptr, gs_ptr, gsr_ptr, gzt_ptr, coef_ptr, dx_ptr, dw_ptr,
    D, H, W, stride_d, stride_s, n_tiles, n_split,
    HAS_GO: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Backward pass 2: dx = r (g_z̃ w + Σ_j c_ij x_j) − coef x + keep g_out, and dw partials.

    dw partials: this tile's Σ_i g_z̃_i r_i x_i, row (sample, tile) of ``dw``.
    """
    b, t, split = _program(n_tiles, n_split)
    HW = H * W
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    o = b * HW + s
    r = tl.load(r_ptr + o, mask=s_ok, other=0.0).to(ACC)
    keep = tl.load(keep_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gs = tl.load(gs_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gzt = tl.load(gzt_ptr + o, mask=s_ok, other=0.0).to(ACC)
    coef = tl.load(coef_ptr + o, mask=s_ok, other=0.0).to(ACC)
    for d0 in range(split * BLOCK_D, D, n_split * BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        off = s[:, None] * stride_s + d[None, :] * stride_d
        ok2 = s_ok[:, None] & d_ok[None, :]
        xv = tl.load(xb_ptr + off, mask=ok2, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        g = gzt[:, None] * wv[None, :] + _weighted_neighbours(
            xb_ptr, r_ptr + b * HW, gsr_ptr + b * HW, gs, s, s_ok, d, d_ok, H, W, stride_d,
            stride_s, True, ACC, BLOCK_S, BLOCK_D)  # fmt: skip
        dx = g * r[:, None] - xv * coef[:, None]
        if HAS_GO:
            dx += tl.load(go_ptr + b * D * HW + off, mask=ok2, other=0.0).to(ACC) * keep[:, None]
        tl.store(dx_ptr + b * D * HW + off, dx.to(dx_ptr.dtype.element_ty), mask=ok2)
        tl.store(dw_ptr + (b * n_tiles + t) * D + d, tl.sum(xv * (gzt * r)[:, None], axis=0),
                 mask=d_ok)  # fmt: skip


class Tile(NamedTuple):
    """Launch shape: BLOCK_S tokens × BLOCK_D channels per chunk, ``n_split`` channel splits.

    ``n_split`` programs share a token tile in the two split passes (forward
    pass 2, backward pass 2), each taking every ``n_split``-th channel chunk.
    """

    block_d: int
    block_s: int
    n_split: int = 1
    num_warps: int = 4


TARGET_PROGRAMS = 1056  # eight programs per SM of a 132-SM H100 / H200
TILE_ELEMENTS = 1024  # BLOCK_S · BLOCK_D: 8 values per thread and tile at 4 warps
BLOCKS: Tile | None = None  # override for tests of the tiling
GPU_TILING = not interpreting()  # the interpreter runs whole planes unless a test sets it


def gpu_tile(d: int, hw: int, bsz: int, channels_last: bool = False) -> Tile:
    """The tile a GPU launch uses for B = ``bsz`` token maps (D, h·w = ``hw``).

    Loads run along the contiguous axis: channels-last, BLOCK_D up to 64
    channels (256 bytes of float32 per token row) and BLOCK_S the rest of the
    tile, 4 warps; NCHW, BLOCK_S up to 128 tokens of a row and BLOCK_D the rest,
    8 warps (at 4 the NCHW backward needs 255 registers on sm_90, at 8 about
    180: ``kernels/aot.py``). The channel chunks are split over programs until
    B · tiles · splits reaches TARGET_PROGRAMS (channels-last D = 2048 at 7x7,
    B = 64: 256 tiles, 5 splits).
    """
    p2d, p2s = triton.next_power_of_2(d), triton.next_power_of_2(hw)
    if channels_last:
        block_d = min(p2d, 64)
        block_s = max(2, min(p2s, TILE_ELEMENTS // block_d))
    else:
        block_s = max(2, min(p2s, 128))
        block_d = min(p2d, TILE_ELEMENTS // block_s)
    tiles = bsz * triton.cdiv(hw, block_s)
    chunks = triton.cdiv(d, block_d)
    n_split = max(1, min(chunks, triton.cdiv(TARGET_PROGRAMS, tiles)))
    return Tile(block_d, block_s, n_split, 4 if channels_last else 8)


def _tile(d: int, hw: int, bsz: int, channels_last: bool) -> Tile:
    if BLOCKS is not None:
        return BLOCKS
    if GPU_TILING:
        return gpu_tile(d, hw, bsz, channels_last)
    return Tile(min(triton.next_power_of_2(d), 64), triton.next_power_of_2(hw))


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_sample_size(d: int, hw: int) -> None:
    if d * hw >= 2**31:
        raise ValueError(
            f"x: one sample's token map must hold < 2**31 values, but got D·h·w = {d * hw}"
        )


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout the kernels run in: channels-last when ``x`` is, else NCHW (copied if needed)."""
    if layout_class(x) == "channels_last":
        return torch.channels_last
    return torch.contiguous_format


def _layout(x: Tensor) -> tuple[Tensor, int, int, bool]:
    """(x in its kernel layout, stride between channels, stride between tokens, channels-last)."""
    fmt = memory_format(x)
    x = x.contiguous(memory_format=fmt)
    d, h, w = x.shape[1:]
    if fmt == torch.channels_last:
        return x, 1, d, True
    return x, h * w, 1, False


def forward(x: Tensor, weight: Tensor, bias: Tensor, lam: float, gamma: float, temperature: float):
    """Launch the forward kernels on tokens x (B, D, h, w): (out, z, keep, U, P, r, s).

    ``out`` has the layout of x (channels-last or NCHW).
    """
    x, stride_d, stride_s, channels_last = _layout(x)
    bsz, d, h, w = x.shape
    _check_sample_size(d, h * w)
    sd = _stat_dtype(x.dtype)
    weight_c = weight.detach().to(sd).contiguous()
    bias_c = bias.detach().to(sd).contiguous()
    r, z, keep, unary = (torch.empty(bsz, h, w, device=x.device, dtype=sd) for _ in range(4))
    out = torch.empty_like(x)
    tile = _tile(d, h * w, bsz, channels_last)
    n_tiles = triton.cdiv(h * w, tile.block_s)
    sim_parts = torch.empty(tile.n_split, bsz, h, w, device=x.device, dtype=sd)
    blocks = dict(ACC=_acc(x.dtype), BLOCK_D=tile.block_d, BLOCK_S=tile.block_s)
    launch(
        _ersm_fwd_tokens, (bsz * n_tiles,),
        (x, weight_c, bias_c, r, z, keep, unary,
         d, h, w, stride_d, stride_s, n_tiles, float(lam), 1.0 / float(temperature)),
        num_warps=tile.num_warps, BIAS_PER_POS=bias.dim() > 0, **blocks,
    )  # fmt: skip
    launch(
        _ersm_fwd_pairs, (bsz * n_tiles * tile.n_split,),
        (x, r, keep, sim_parts, out, bsz, d, h, w, stride_d, stride_s, n_tiles, tile.n_split),
        num_warps=tile.num_warps, **blocks,
    )  # fmt: skip
    sim = (sim_parts[0] if tile.n_split == 1 else sim_parts.sum(0)) * r
    return out, z, keep, unary, float(gamma) * F.softplus(sim), r, sim


def backward(
    x: Tensor,
    weight: Tensor,
    r: Tensor,
    z: Tensor,
    keep: Tensor,
    sim: Tensor,
    g_out: Tensor | None,
    g_z: Tensor,
    g_keep: Tensor,
    g_u: Tensor,
    g_p: Tensor,
    lam: float,
    gamma: float,
    temperature: float,
    per_position: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernels: (dx, dw, db), dx in the layout of x, dw and db float32/64."""
    x, stride_d, stride_s, channels_last = _layout(x)
    weight = weight.detach().to(z.dtype).contiguous()
    bsz, d, h, w = x.shape
    g_z, g_keep, g_u = (g.to(z.dtype).contiguous() for g in (g_z, g_keep, g_u))
    gs = (float(gamma) * torch.sigmoid(sim) * g_p.to(z.dtype)).contiguous()  # g_s = γ σ(s) g_P
    gsr = gs * r
    has_go = g_out is not None
    g_out = g_out.contiguous(memory_format=memory_format(x)) if has_go else x  # dummy if absent
    tile = _tile(d, h * w, bsz, channels_last)
    n_tiles = triton.cdiv(h * w, tile.block_s)
    gzt, coef = torch.empty_like(z), torch.empty_like(z)
    dx = torch.empty_like(x)
    dw_part = torch.empty(bsz * n_tiles, d, device=x.device, dtype=z.dtype)
    r, z, keep = r.contiguous(), z.contiguous(), keep.contiguous()
    blocks = dict(HAS_GO=has_go, ACC=_acc(x.dtype), BLOCK_D=tile.block_d, BLOCK_S=tile.block_s)
    launch(
        _ersm_bwd_tokens, (bsz * n_tiles,),
        (x, g_out, weight, r, z, keep, gs, gsr, g_z, g_keep, g_u, gzt, coef,
         d, h, w, stride_d, stride_s, n_tiles, float(lam), 1.0 / float(temperature)),
        num_warps=tile.num_warps, **blocks,
    )  # fmt: skip
    launch(
        _ersm_bwd_dx, (bsz * n_tiles * tile.n_split,),
        (x, g_out, weight, r, keep, gs, gsr, gzt, coef, dx, dw_part,
         d, h, w, stride_d, stride_s, n_tiles, tile.n_split),
        num_warps=tile.num_warps, **blocks,
    )  # fmt: skip
    db = gzt.sum(dim=0) if per_position else gzt.sum()
    return dx, dw_part.sum(dim=0), db


# Registered as torch.library custom ops (docs/design.md §5):
# a forward op, a backward op and ``register_autograd`` linking them, with fake
# (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through the
# layer (the ops stay opaque to Inductor) instead of breaking the graph.


@torch.library.custom_op("energymask::ersm_token_energy", mutates_args=())
def ersm_token_energy(
    x: Tensor, weight: Tensor, bias: Tensor, lam: float, gamma: float, temperature: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(tokens (B, D, h, w), weight (D,), bias () or (h, w)) -> (out, z, keep, U, P, r, s).

    ``r`` (1 / (‖x_i‖ + eps)) and ``s`` (neighbour similarity) are what backward needs.
    """
    return forward(x, weight, bias, lam, gamma, temperature)


@ersm_token_energy.register_fake
def _(x, weight, bias, lam, gamma, temperature):
    bsz, _, h, w = x.shape
    stats = [x.new_empty(bsz, h, w, dtype=_stat_dtype(x.dtype)) for _ in range(6)]
    z, keep, unary, pair, r, sim = stats
    return torch.empty_like(x, memory_format=memory_format(x)), z, keep, unary, pair, r, sim


@torch.library.custom_op("energymask::ersm_token_energy_backward", mutates_args=())
def ersm_token_energy_backward(
    x: Tensor,
    weight: Tensor,
    r: Tensor,
    z: Tensor,
    keep: Tensor,
    sim: Tensor,
    g_out: Tensor | None,
    g_z: Tensor,
    g_keep: Tensor,
    g_u: Tensor,
    g_p: Tensor,
    lam: float,
    gamma: float,
    temperature: float,
    per_position: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dw, db) of :func:`ersm_token_energy`; dw and db in float32/64."""  # fmt: skip
    return backward(x, weight, r, z, keep, sim, g_out, g_z, g_keep, g_u, g_p,
                    lam, gamma, temperature, per_position)  # fmt: skip


@ersm_token_energy_backward.register_fake
def _(
    x, weight, r, z, keep, sim, g_out, g_z, g_keep, g_u, g_p, lam, gamma, temperature, per_position
):
    db = z.new_empty(z.shape[1:]) if per_position else z.new_empty(())
    dx = torch.empty_like(x, memory_format=memory_format(x))
    return dx, z.new_empty(x.shape[1]), db


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, lam, gamma, temperature = inputs
    _, z, keep, _, _, r, sim = output
    ctx.set_materialize_grads(False)  # an unused output's grad stays None, not a zero tensor
    ctx.save_for_backward(x, weight, bias, r, z, keep, sim)
    ctx.settings = (float(lam), float(gamma), float(temperature))


def _backward(ctx, g_out, g_z, g_keep, g_u, g_p, _g_r, _g_sim):
    x, weight, bias, r, z, keep, sim = ctx.saved_tensors
    grads = (g_out, g_z, g_keep, g_u, g_p)

    def token_grad(g: Tensor | None) -> Tensor:
        return torch.zeros_like(z) if g is None else g

    def kernel():
        dx, dw, db = ersm_token_energy_backward(
            x, weight, r, z, keep, sim, g_out, *(token_grad(g) for g in grads[1:]),
            *ctx.settings, bias.dim() > 0,
        )  # fmt: skip
        return dx, dw.to(weight.dtype), db.reshape(bias.shape).to(bias.dtype)

    def reference_grads():  # the same gradients through the PyTorch reference
        from .reference import ersm_energy as reference_energy

        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
            res = reference_energy(*leaves, 1, *ctx.settings)
            pairs = [(o, g) for o, g in zip(res, grads, strict=True) if g is not None]
            got = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                      allow_unused=True)  # fmt: skip
        return tuple(torch.zeros_like(t) if g is None else g
                     for t, g in zip(leaves, got, strict=True))  # fmt: skip

    return (*guarded("ersm_energy backward", kernel, reference_grads), None, None, None)


ersm_token_energy.register_autograd(_backward, setup_context=_setup_context)


def ersm_energy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int,
    lam: float,
    gamma: float,
    temperature: float,
) -> ErsmEnergy:
    """Triton version of :func:`energymask.kernels.reference.ersm_energy` (same signature)."""
    tokens = F.pixel_unshuffle(x, token_size) if token_size > 1 else x
    out, z, keep, unary, pair, _, _ = ersm_token_energy(
        tokens, weight, bias, float(lam), float(gamma), float(temperature)
    )
    if token_size > 1:
        out = F.pixel_shuffle(out, token_size)
    return ErsmEnergy(out, z, keep, unary, pair)


__all__ = ["BLOCKS", "GPU_TILING", "TARGET_PROGRAMS", "TILE_ELEMENTS", "Tile", "backward",
           "ersm_energy", "ersm_token_energy", "ersm_token_energy_backward", "forward", "gpu_tile",
           "memory_format"]
