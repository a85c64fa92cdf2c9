"""Fused Triton kernels for the ERSM token energy (DESIGN.md §3, §5).

Devynck et al., "Energy-Regularized Spatial Masking", IJCAI 2026, arXiv 2604.06893.
Must match :func:`energymask.kernels.reference.ersm_energy`.

Forward, per token i of a (B, D, h, w) token map (D = C·p², p > 1 by
``pixel_unshuffle`` in the wrapper), n_i = ‖x_i‖, r_i = 1 / (n_i + eps)::

    x̂_i = x_i r_i,  z_i = w·x̂_i + b_i,  s_i = Σ_{j∈N8(i)} ⟨x̂_i, x̂_j⟩
    keep_i = σ(−z_i / T),  U_i = λ softplus(z_i),  P_i = γ softplus(s_i),  out_i = x_i keep_i

Two launches: ``_norm_fwd`` reads x once (r, z, keep, U); ``_pair_fwd`` reads
the centre tile and the 8 shifted tiles (masked loads, ``other=0``, so off-grid
neighbours give 0) and writes s, P and out. No shifted copy is materialised:
s_i = r_i Σ_c x_ic y_ic with y_i = Σ_j r_j x_j built chunk by chunk.

Backward, with upstream g_out, g_z, g_keep, g_U, g_P (None -> 0)::

    g_z̃_i = g_z_i + λ σ(z_i) g_U_i − keep_i (1 − keep_i) / T · (g_keep_i + Σ_c g_out_ic x_ic)
    g_s_i = γ σ(s_i) g_P_i
    db    = Σ g_z̃ (over b, or over everything for a scalar bias)
    dw    = Σ_{b,i} g_z̃_i x̂_i
    G_i   = dL/dx̂_i = g_z̃_i w + Σ_{j∈N8(i)} (g_s_i + g_s_j) x̂_j     (s is symmetric in i, j)
    dx_i  = r_i G_i − (G_i·x_i) x_i r_i² / n_i  [0 where n_i = 0]  +  keep_i g_out_i

(the normalisation Jacobian: ∂x̂/∂x = r I − x xᵀ r² / n). ``_grad_token`` gives
g_z̃, g_s; ``_grad_x`` loops twice over channels (G·x first, then dx) and
writes per-tile partial sums of dw, summed in torch: no atomics, deterministic.

Grid (B, tiles of h·w); the spatial tile is flattened (row = idx // w). Offsets
are int64, accumulation is float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import interpreting
from .reference import EPS as _EPS

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
def _norm_fwd(
    x_ptr, w_ptr, b_ptr, r_ptr, z_ptr, keep_ptr, u_ptr,
    D, HW, lam, inv_t,
    BIAS_PER_POS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    sq = tl.zeros([BLOCK_S], dtype=ACC)
    wx = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        ok = d_ok[:, None] & s_ok[None, :]
        off = b * D * HW + d.to(tl.int64)[:, None] * HW + s[None, :]
        xv = tl.load(x_ptr + off, mask=ok, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        sq += tl.sum(xv * xv, axis=0)
        wx += tl.sum(xv * wv[:, None], axis=0)
    r = 1.0 / (tl.sqrt(sq) + EPS)
    if BIAS_PER_POS:
        bias = tl.load(b_ptr + s, mask=s_ok, other=0.0).to(ACC)
    else:
        bias = tl.load(b_ptr).to(ACC)
    z = wx * r + bias
    keep = _sigmoid(-z * inv_t)
    o = b * HW + s
    tl.store(r_ptr + o, r, mask=s_ok)
    tl.store(z_ptr + o, z, mask=s_ok)
    tl.store(keep_ptr + o, keep, mask=s_ok)
    tl.store(u_ptr + o, lam * _softplus(z), mask=s_ok)


@triton.jit
def _neighbour_sums(
    xb_ptr, rb_ptr, gb_ptr, d, d_ok, s, s_ok, H, W, HW,
    WITH_G: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """(Σ_{j∈N8} r_j x_j, Σ_{j∈N8} g_j r_j x_j) over one (BLOCK_D, BLOCK_S) chunk of one sample."""
    row = s // W
    col = s % W
    y = tl.zeros([BLOCK_D, BLOCK_S], dtype=ACC)
    yg = tl.zeros([BLOCK_D, BLOCK_S], dtype=ACC)
    for k in tl.static_range(9):
        if k != 4:
            nr = row + (k // 3 - 1)
            nc = col + (k % 3 - 1)
            ok = s_ok & (nr >= 0) & (nr < H) & (nc >= 0) & (nc < W)
            j = nr * W + nc
            rj = tl.load(rb_ptr + j, mask=ok, other=0.0).to(ACC)
            off = d.to(tl.int64)[:, None] * HW + j[None, :]
            xj = tl.load(xb_ptr + off, mask=d_ok[:, None] & ok[None, :], other=0.0).to(ACC)
            y += xj * rj[None, :]
            if WITH_G:
                gj = tl.load(gb_ptr + j, mask=ok, other=0.0).to(ACC)
                yg += xj * (rj * gj)[None, :]
    return y, yg


@triton.jit
def _pair_fwd(
    x_ptr, r_ptr, keep_ptr, s_out_ptr, p_ptr, out_ptr,
    D, H, W, HW, gamma,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    rb_ptr = r_ptr + b * HW
    keep = tl.load(keep_ptr + b * HW + s, mask=s_ok, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        ok = d_ok[:, None] & s_ok[None, :]
        off = d.to(tl.int64)[:, None] * HW + s[None, :]
        xv = tl.load(xb_ptr + off, mask=ok, other=0.0).to(ACC)
        y, _ = _neighbour_sums(
            xb_ptr, rb_ptr, rb_ptr, d, d_ok, s, s_ok, H, W, HW, False, ACC, BLOCK_D, BLOCK_S
        )
        acc += tl.sum(xv * y, axis=0)
        out = xv * keep[None, :]
        tl.store(out_ptr + b * D * HW + off, out.to(out_ptr.dtype.element_ty), mask=ok)
    r = tl.load(rb_ptr + s, mask=s_ok, other=0.0).to(ACC)
    sim = acc * r
    tl.store(s_out_ptr + b * HW + s, sim, mask=s_ok)
    tl.store(p_ptr + b * HW + s, gamma * _softplus(sim), mask=s_ok)


@triton.jit
def _grad_token(
    x_ptr, go_ptr, z_ptr, keep_ptr, sim_ptr, gz_ptr, gk_ptr, gu_ptr, gp_ptr, gzt_ptr, gs_ptr,
    D, HW, lam, gamma, inv_t,
    HAS_GO: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    o = b * HW + s
    gox = tl.zeros([BLOCK_S], dtype=ACC)
    if HAS_GO:
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            ok = (d < D)[:, None] & s_ok[None, :]
            off = b * D * HW + d.to(tl.int64)[:, None] * HW + s[None, :]
            xv = tl.load(x_ptr + off, mask=ok, other=0.0).to(ACC)
            gv = tl.load(go_ptr + off, mask=ok, other=0.0).to(ACC)
            gox += tl.sum(xv * gv, axis=0)
    z = tl.load(z_ptr + o, mask=s_ok, other=0.0).to(ACC)
    keep = tl.load(keep_ptr + o, mask=s_ok, other=0.0).to(ACC)
    sim = tl.load(sim_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gz = tl.load(gz_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gk = tl.load(gk_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gu = tl.load(gu_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gp = tl.load(gp_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gzt = gz + lam * _sigmoid(z) * gu - keep * (1.0 - keep) * inv_t * (gk + gox)
    tl.store(gzt_ptr + o, gzt, mask=s_ok)
    tl.store(gs_ptr + o, gamma * _sigmoid(sim) * gp, mask=s_ok)


@triton.jit
def _grad_x(
    x_ptr, go_ptr, w_ptr, r_ptr, keep_ptr, gzt_ptr, gs_ptr, dx_ptr, dw_ptr,
    D, H, W, HW, n_tiles,
    HAS_GO: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < HW
    xb_ptr = x_ptr + b * D * HW
    rb_ptr = r_ptr + b * HW
    gsb_ptr = gs_ptr + b * HW
    o = b * HW + s
    r = tl.load(r_ptr + o, mask=s_ok, other=1.0).to(ACC)
    keep = tl.load(keep_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gzt = tl.load(gzt_ptr + o, mask=s_ok, other=0.0).to(ACC)
    gs = tl.load(gs_ptr + o, mask=s_ok, other=0.0).to(ACC)
    dw_base = (b * n_tiles + t) * D
    # pass 1: G·x per token, and the per-tile partial sums of dw = Σ g_z̃ x̂
    gx = tl.zeros([BLOCK_S], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        ok = d_ok[:, None] & s_ok[None, :]
        off = d.to(tl.int64)[:, None] * HW + s[None, :]
        xv = tl.load(xb_ptr + off, mask=ok, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        y, yg = _neighbour_sums(
            xb_ptr, rb_ptr, gsb_ptr, d, d_ok, s, s_ok, H, W, HW, True, ACC, BLOCK_D, BLOCK_S
        )
        g = gzt[None, :] * wv[:, None] + gs[None, :] * y + yg
        gx += tl.sum(g * xv, axis=0)
        tl.store(dw_ptr + dw_base + d, tl.sum(xv * (gzt * r)[None, :], axis=1), mask=d_ok)
    # pass 2: dx = r G − (G·x) x r² / n + keep g_out
    n = 1.0 / r - EPS
    coef = tl.where(n > 0.0, gx * r * r / tl.where(n > 0.0, n, 1.0), 0.0)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        ok = d_ok[:, None] & s_ok[None, :]
        off = d.to(tl.int64)[:, None] * HW + s[None, :]
        xv = tl.load(xb_ptr + off, mask=ok, other=0.0).to(ACC)
        wv = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(ACC)
        y, yg = _neighbour_sums(
            xb_ptr, rb_ptr, gsb_ptr, d, d_ok, s, s_ok, H, W, HW, True, ACC, BLOCK_D, BLOCK_S
        )
        g = gzt[None, :] * wv[:, None] + gs[None, :] * y + yg
        dx = g * r[None, :] - xv * coef[None, :]
        if HAS_GO:
            gv = tl.load(go_ptr + b * D * HW + off, mask=ok, other=0.0).to(ACC)
            dx += gv * keep[None, :]
        tl.store(dx_ptr + b * D * HW + off, dx.to(dx_ptr.dtype.element_ty), mask=ok)


BLOCKS: tuple[int, int] | None = None  # (BLOCK_D, BLOCK_S) override, for tests of tiling


def _blocks(d: int, hw: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_S): whole planes in the interpreter, tiles on a GPU."""
    if BLOCKS is not None:
        return BLOCKS
    if interpreting():
        return min(triton.next_power_of_2(d), 64), triton.next_power_of_2(hw)
    return min(triton.next_power_of_2(d), 32), min(triton.next_power_of_2(hw), 64)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Registered as torch.library custom ops (KERNELS.md, "Registering with PyTorch"):
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
    x = x.contiguous()
    bsz, d, h, w = x.shape
    hw = h * w
    sd = _stat_dtype(x.dtype)
    weight_c = weight.detach().to(sd).contiguous()
    bias_c = bias.detach().to(sd).contiguous()
    r, z, keep, unary, sim, pair = (
        torch.empty(bsz, h, w, device=x.device, dtype=sd) for _ in range(6)
    )
    out = torch.empty_like(x)
    block_d, block_s = _blocks(d, hw)
    grid = (bsz, triton.cdiv(hw, block_s))
    acc = _acc(x.dtype)
    _norm_fwd[grid](
        x, weight_c, bias_c, r, z, keep, unary, d, hw, float(lam), 1.0 / float(temperature),
        BIAS_PER_POS=bias.dim() > 0, ACC=acc, BLOCK_D=block_d, BLOCK_S=block_s,
    )  # fmt: skip
    _pair_fwd[grid](
        x, r, keep, sim, pair, out, d, h, w, hw, float(gamma),
        ACC=acc, BLOCK_D=block_d, BLOCK_S=block_s,
    )  # fmt: skip
    return out, z, keep, unary, pair, r, sim


@ersm_token_energy.register_fake
def _(x, weight, bias, lam, gamma, temperature):
    bsz, _, h, w = x.shape
    stats = [x.new_empty(bsz, h, w, dtype=_stat_dtype(x.dtype)) for _ in range(6)]
    z, keep, unary, pair, r, sim = stats
    return torch.empty_like(x, memory_format=torch.contiguous_format), z, keep, unary, pair, r, sim


@torch.library.custom_op("energymask::ersm_token_energy_backward", mutates_args=())
def ersm_token_energy_backward(
    x: Tensor, weight: Tensor, r: Tensor, z: Tensor, keep: Tensor, sim: Tensor,
    g_out: Tensor | None, g_z: Tensor, g_keep: Tensor, g_u: Tensor, g_p: Tensor,
    lam: float, gamma: float, temperature: float, per_position: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dw, db) of :func:`ersm_token_energy`; dw and db in float32/64."""  # fmt: skip
    x = x.contiguous()
    weight = weight.detach().to(z.dtype).contiguous()
    bsz, d, h, w = x.shape
    hw = h * w
    g_z, g_keep, g_u, g_p = (g.to(z.dtype).contiguous() for g in (g_z, g_keep, g_u, g_p))
    has_go = g_out is not None
    g_out = g_out.contiguous() if has_go else x  # dummy pointer when absent
    gzt = torch.empty_like(z)
    gs = torch.empty_like(z)
    block_d, block_s = _blocks(d, hw)
    n_tiles = triton.cdiv(hw, block_s)
    grid = (bsz, n_tiles)
    acc = _acc(x.dtype)
    _grad_token[grid](
        x, g_out, z, keep, sim, g_z, g_keep, g_u, g_p, gzt, gs,
        d, hw, lam, gamma, 1.0 / temperature,
        HAS_GO=has_go, ACC=acc, BLOCK_D=block_d, BLOCK_S=block_s,
    )  # fmt: skip
    dx = torch.empty_like(x)
    dw_part = torch.empty(bsz, n_tiles, d, device=x.device, dtype=z.dtype)
    _grad_x[grid](
        x, g_out, weight, r, keep, gzt, gs, dx, dw_part, d, h, w, hw, n_tiles,
        HAS_GO=has_go, ACC=acc, BLOCK_D=block_d, BLOCK_S=block_s,
    )  # fmt: skip
    db = gzt.sum(dim=0) if per_position else gzt.sum()
    return dx, dw_part.sum(dim=(0, 1)), db


@ersm_token_energy_backward.register_fake
def _(x, weight, r, z, keep, sim, g_out, g_z, g_keep, g_u, g_p, lam, gamma, temperature,
      per_position):
    db = z.new_empty(z.shape[1:]) if per_position else z.new_empty(())
    return torch.empty_like(x, memory_format=torch.contiguous_format), z.new_empty(x.shape[1]), db


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, lam, gamma, temperature = inputs
    _, z, keep, _, _, r, sim = output
    ctx.set_materialize_grads(False)  # an unused output's grad stays None, not a zero tensor
    ctx.save_for_backward(x, weight, r, z, keep, sim)
    ctx.settings = (float(lam), float(gamma), float(temperature))
    ctx.bias_meta = (bias.dim() > 0, bias.shape, bias.dtype)


def _backward(ctx, g_out, g_z, g_keep, g_u, g_p, _g_r, _g_sim):
    x, weight, r, z, keep, sim = ctx.saved_tensors
    per_position, bias_shape, bias_dtype = ctx.bias_meta

    def token_grad(g: Tensor | None) -> Tensor:
        return torch.zeros_like(z) if g is None else g

    dx, dw, db = ersm_token_energy_backward(
        x, weight, r, z, keep, sim, g_out, token_grad(g_z), token_grad(g_keep),
        token_grad(g_u), token_grad(g_p), *ctx.settings, per_position,
    )  # fmt: skip
    return dx, dw.to(weight.dtype), db.reshape(bias_shape).to(bias_dtype), None, None, None


ersm_token_energy.register_autograd(_backward, setup_context=_setup_context)


def ersm_energy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int = 1,
    lam: float = 1e-3,
    gamma: float = 1e-3,
    temperature: float = 1.0,
):
    """Triton version of :func:`energymask.kernels.reference.ersm_energy` (same signature)."""
    from .reference import ErsmEnergy

    tokens = F.pixel_unshuffle(x, token_size) if token_size > 1 else x
    out, z, keep, unary, pair, _, _ = ersm_token_energy(
        tokens, weight, bias, float(lam), float(gamma), float(temperature)
    )
    if token_size > 1:
        out = F.pixel_shuffle(out, token_size)
    return ErsmEnergy(out, z, keep, unary, pair)
