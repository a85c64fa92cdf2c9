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

One launch each way. A program owns BLOCK_S consecutive tokens (row-major) of
one sample and loops over the channels in chunks of BLOCK_D: the forward
gathers ‖x_j‖ and ⟨x_i, x_j⟩ of the 8 neighbours in one pass over its tile
(neighbour tiles are masked loads, ``other=0``, so off-grid neighbours give 0;
they were just read by the neighbouring programs and come from cache), then
writes out; the backward gathers g_out·x, w·x and the neighbour dots, then
writes dx and per-tile partial sums of dw (summed in torch: no atomics,
deterministic). Each launch reads its feature maps once from memory
(``benchmarks/bench_kernels.py`` counts it). The sample's base offset is int64,
offsets inside a sample int32 (D·h·w < 2³¹, checked; it halves the address
registers); accumulation float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import guarded, interpreting
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
def _ersm_fwd(
    x_ptr, w_ptr, b_ptr, r_ptr, z_ptr, keep_ptr, u_ptr, sim_ptr, p_ptr, out_ptr,
    D, H, W, lam, gamma, inv_t,
    BIAS_PER_POS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    HW = H * W
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    sq = tl.zeros([BLOCK_S], dtype=ACC)
    wx = tl.zeros([BLOCK_S], dtype=ACC)
    sim = tl.zeros([BLOCK_S], dtype=ACC)  # Σ_j r_j ⟨x_i, x_j⟩, times r_i below
    for k in tl.static_range(9):
        j, ok = _neighbour(s, s_ok, k, H, W)
        sq_j = tl.zeros([BLOCK_S], dtype=ACC)
        dot = tl.zeros([BLOCK_S], dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_ok = d < D
            row_off = d[:, None] * HW
            xv = tl.load(xb_ptr + row_off + s[None, :], mask=d_ok[:, None] & s_ok[None, :],
                         other=0.0).to(ACC)  # fmt: skip
            if k == 4:
                wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
                sq_j += tl.sum(xv * xv, axis=0)
                wx += tl.sum(xv * wv[:, None], axis=0)
            else:
                xj = tl.load(xb_ptr + row_off + j[None, :], mask=d_ok[:, None] & ok[None, :],
                             other=0.0).to(ACC)  # fmt: skip
                sq_j += tl.sum(xj * xj, axis=0)
                dot += tl.sum(xv * xj, axis=0)
        if k == 4:
            sq = sq_j
        else:
            sim += dot / (tl.sqrt(sq_j) + EPS)  # dot = 0 off the grid
    r = 1.0 / (tl.sqrt(sq) + EPS)
    if BIAS_PER_POS:
        bias = tl.load(b_ptr + s, mask=s_ok, other=0.0).to(ACC)
    else:
        bias = tl.load(b_ptr).to(ACC)
    z = wx * r + bias
    keep = _sigmoid(-z * inv_t)
    sim = sim * r
    o = b * HW + s
    tl.store(r_ptr + o, r, mask=s_ok)
    tl.store(z_ptr + o, z, mask=s_ok)
    tl.store(keep_ptr + o, keep, mask=s_ok)
    tl.store(u_ptr + o, lam * _softplus(z), mask=s_ok)
    tl.store(sim_ptr + o, sim, mask=s_ok)
    tl.store(p_ptr + o, gamma * _softplus(sim), mask=s_ok)
    for d0 in range(0, D, BLOCK_D):  # the tile was just read: from cache
        d = d0 + tl.arange(0, BLOCK_D)
        off = d[:, None] * HW + s[None, :]
        ok2 = (d < D)[:, None] & s_ok[None, :]
        xv = tl.load(xb_ptr + off, mask=ok2, other=0.0).to(ACC)
        tl.store(out_ptr + b * D * HW + off, (xv * keep[None, :]).to(out_ptr.dtype.element_ty),
                 mask=ok2)  # fmt: skip


@triton.jit
def _pair_coef(r_ptr, sim_ptr, gp_ptr, gs, j, ok, gamma, ACC: tl.constexpr):
    """c_ij = (g_s_i + g_s_j) r_j for neighbour tokens j (0 off the grid)."""
    rj = tl.load(r_ptr + j, mask=ok, other=0.0).to(ACC)
    sim_j = tl.load(sim_ptr + j, mask=ok, other=0.0).to(ACC)
    gp_j = tl.load(gp_ptr + j, mask=ok, other=0.0).to(ACC)
    return tl.where(ok, (gs + gamma * _sigmoid(sim_j) * gp_j) * rj, 0.0)


@triton.jit
def _ersm_bwd(
    x_ptr, go_ptr, w_ptr, r_ptr, z_ptr, keep_ptr, sim_ptr, gz_ptr, gk_ptr, gu_ptr, gp_ptr,
    gzt_ptr, dx_ptr, dw_ptr,
    D, H, W, n_tiles, lam, gamma, inv_t,
    HAS_GO: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    HW = H * W
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    gob_ptr = go_ptr + b * D * HW
    rb_ptr = r_ptr + b * HW
    simb_ptr = sim_ptr + b * HW
    gpb_ptr = gp_ptr + b * HW
    o = b * HW + s
    r = tl.load(r_ptr + o, mask=s_ok, other=1.0).to(ACC)
    z = tl.load(z_ptr + o, mask=s_ok, other=0.0).to(ACC)
    keep = tl.load(keep_ptr + o, mask=s_ok, other=0.0).to(ACC)
    sim = tl.load(sim_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gp = tl.load(gp_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gs = gamma * _sigmoid(sim) * gp
    # pass 1: g_out·x, w·x and Σ_j c_ij ⟨x_i, x_j⟩ per token
    gox = tl.zeros([BLOCK_S], dtype=ACC)
    wx = tl.zeros([BLOCK_S], dtype=ACC)
    pair = tl.zeros([BLOCK_S], dtype=ACC)
    for k in tl.static_range(9):
        j, ok = _neighbour(s, s_ok, k, H, W)
        if k != 4:
            c = _pair_coef(rb_ptr, simb_ptr, gpb_ptr, gs, j, ok, gamma, ACC)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_ok = d < D
            row_off = d[:, None] * HW
            tile_ok = d_ok[:, None] & s_ok[None, :]
            xv = tl.load(xb_ptr + row_off + s[None, :], mask=tile_ok, other=0.0).to(ACC)
            if k == 4:
                wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
                wx += tl.sum(xv * wv[:, None], axis=0)
                if HAS_GO:
                    gv = tl.load(gob_ptr + row_off + s[None, :], mask=tile_ok, other=0.0).to(ACC)
                    gox += tl.sum(xv * gv, axis=0)
            else:
                xj = tl.load(xb_ptr + row_off + j[None, :], mask=d_ok[:, None] & ok[None, :],
                             other=0.0).to(ACC)  # fmt: skip
                pair += c * tl.sum(xv * xj, axis=0)
    gz = tl.load(gz_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gk = tl.load(gk_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gu = tl.load(gu_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gzt = gz + lam * _sigmoid(z) * gu - keep * (1.0 - keep) * inv_t * (gk + gox)
    tl.store(gzt_ptr + o, gzt, mask=s_ok)
    gx = gzt * wx + pair
    n = 1.0 / r - EPS
    coef = tl.where(n > 0.0, gx * r * r / tl.where(n > 0.0, n, 1.0), 0.0)
    # pass 2: dx = r G − coef x + keep g_out, and this tile's share of dw
    dw_base = (b * n_tiles + t) * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        row_off = d[:, None] * HW
        tile_ok = d_ok[:, None] & s_ok[None, :]
        xv = tl.load(xb_ptr + row_off + s[None, :], mask=tile_ok, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        g = gzt[None, :] * wv[:, None]
        for k in tl.static_range(9):
            if k != 4:
                j, ok = _neighbour(s, s_ok, k, H, W)
                c = _pair_coef(rb_ptr, simb_ptr, gpb_ptr, gs, j, ok, gamma, ACC)
                xj = tl.load(xb_ptr + row_off + j[None, :], mask=d_ok[:, None] & ok[None, :],
                             other=0.0).to(ACC)  # fmt: skip
                g += xj * c[None, :]
        dx = g * r[None, :] - xv * coef[None, :]
        if HAS_GO:
            gv = tl.load(gob_ptr + row_off + s[None, :], mask=tile_ok, other=0.0).to(ACC)
            dx += gv * keep[None, :]
        tl.store(dx_ptr + b * D * HW + row_off + s[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=tile_ok)  # fmt: skip
        tl.store(dw_ptr + dw_base + d, tl.sum(xv * (gzt * r)[None, :], axis=1), mask=d_ok)


class Tile(NamedTuple):
    """Launch shape of both kernels: BLOCK_D channels × BLOCK_S tokens, ``num_warps``."""

    block_d: int
    block_s: int
    num_warps: int = 4


TARGET_PROGRAMS = 264  # two programs per SM of a 132-SM H100 / H200
TILE_ELEMENTS = 512  # BLOCK_D · BLOCK_S: 4 values per thread and tile at 4 warps
BLOCKS: Tile | None = None  # override for tests of the tiling
GPU_TILING = not interpreting()  # the interpreter runs whole planes unless a test sets it


def gpu_tile(d: int, hw: int, bsz: int) -> Tile:
    """The tile a GPU launch uses for B = ``bsz`` token maps (D, h·w = ``hw``).

    BLOCK_S tokens: up to 64, halved (down to 8, one 32-byte sector of float32)
    until the B · ⌈hw / BLOCK_S⌉ programs fill the GPU (B = 64 at 7x7: 448);
    BLOCK_D fills the rest of the tile.
    """
    block_s = max(2, min(triton.next_power_of_2(hw), 64))
    while block_s > 8 and bsz * triton.cdiv(hw, block_s) < TARGET_PROGRAMS:
        block_s //= 2
    return Tile(min(triton.next_power_of_2(d), TILE_ELEMENTS // block_s), block_s)


def _tile(d: int, hw: int, bsz: int) -> Tile:
    if BLOCKS is not None:
        return BLOCKS
    if GPU_TILING:
        return gpu_tile(d, hw, bsz)
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


def forward(x: Tensor, weight: Tensor, bias: Tensor, lam: float, gamma: float, temperature: float):
    """Launch the forward kernel on tokens x (B, D, h, w): (out, z, keep, U, P, r, s)."""
    x = x.contiguous()
    bsz, d, h, w = x.shape
    _check_sample_size(d, h * w)
    sd = _stat_dtype(x.dtype)
    weight_c = weight.detach().to(sd).contiguous()
    bias_c = bias.detach().to(sd).contiguous()
    r, z, keep, unary, sim, pair = (
        torch.empty(bsz, h, w, device=x.device, dtype=sd) for _ in range(6)
    )
    out = torch.empty_like(x)
    tile = _tile(d, h * w, bsz)
    launch(
        _ersm_fwd, (bsz, triton.cdiv(h * w, tile.block_s)),
        (x, weight_c, bias_c, r, z, keep, unary, sim, pair, out,
         d, h, w, float(lam), float(gamma), 1.0 / float(temperature)),
        num_warps=tile.num_warps, BIAS_PER_POS=bias.dim() > 0, ACC=_acc(x.dtype),
        BLOCK_D=tile.block_d, BLOCK_S=tile.block_s,
    )  # fmt: skip
    return out, z, keep, unary, pair, r, sim


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
    """Launch the backward kernel: (dx, dw, db), dw and db in float32/64."""  # fmt: skip
    x = x.contiguous()
    weight = weight.detach().to(z.dtype).contiguous()
    bsz, d, h, w = x.shape
    g_z, g_keep, g_u, g_p = (g.to(z.dtype).contiguous() for g in (g_z, g_keep, g_u, g_p))
    has_go = g_out is not None
    g_out = g_out.contiguous() if has_go else x  # dummy pointer when absent
    tile = _tile(d, h * w, bsz)
    n_tiles = triton.cdiv(h * w, tile.block_s)
    gzt = torch.empty_like(z)
    dx = torch.empty_like(x)
    dw_part = torch.empty(bsz, n_tiles, d, device=x.device, dtype=z.dtype)
    launch(
        _ersm_bwd, (bsz, n_tiles),
        (x, g_out, weight, r.contiguous(), z.contiguous(), keep.contiguous(), sim.contiguous(),
         g_z, g_keep, g_u, g_p, gzt, dx, dw_part,
         d, h, w, n_tiles, float(lam), float(gamma), 1.0 / float(temperature)),
        num_warps=tile.num_warps, HAS_GO=has_go, ACC=_acc(x.dtype),
        BLOCK_D=tile.block_d, BLOCK_S=tile.block_s,
    )  # fmt: skip
    db = gzt.sum(dim=0) if per_position else gzt.sum()
    return dx, dw_part.sum(dim=(0, 1)), db


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
    return torch.empty_like(x, memory_format=torch.contiguous_format), z, keep, unary, pair, r, sim


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
    return torch.empty_like(x, memory_format=torch.contiguous_format), z.new_empty(x.shape[1]), db


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
    token_size: int = 1,
    lam: float = 1e-3,
    gamma: float = 1e-3,
    temperature: float = 1.0,
) -> ErsmEnergy:
    """Triton version of :func:`energymask.kernels.reference.ersm_energy` (same signature)."""
    tokens = F.pixel_unshuffle(x, token_size) if token_size > 1 else x
    out, z, keep, unary, pair, _, _ = ersm_token_energy(
        tokens, weight, bias, float(lam), float(gamma), float(temperature)
    )
    if token_size > 1:
        out = F.pixel_shuffle(out, token_size)
    return ErsmEnergy(out, z, keep, unary, pair)
