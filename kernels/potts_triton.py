"""Triton kernels for PB-EDropout's Potts energy and checkerboard Gibbs sweep (DESIGN.md §4, §5).

Must match :func:`energymask.kernels.reference.population_energy` and, in
distribution, :func:`energymask.kernels.reference.gibbs_sweep`. A program holds
BLOCK_P whole (k, b, c) mask planes of h×w sites (patch grids are small), so the
energy is a deterministic in-program sum (no atomics) and one launch covers the
whole population. Random numbers: ``tl.rand(seed, global site index)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import interpreting


@triton.jit
def _load_planes(m_ptr, u_ptr, n_planes, n_unary, H, W, BLOCK_P: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    s = tl.arange(0, BLOCK)
    HW = H * W
    ok = (plane < n_planes)[:, None] & (s < HW)[None, :]
    base = plane[:, None] * HW
    m = tl.load(m_ptr + base + s[None, :], mask=ok, other=0.0).to(tl.float32)
    u_off = (plane % n_unary)[:, None] * HW + s[None, :]
    u = tl.load(u_ptr + u_off, mask=ok, other=0.0).to(tl.float32)
    return plane, base, s, ok, m, u


@triton.jit
def _population_energy(
    m_ptr, u_ptr, e_ptr, n_planes, n_unary, H, W, beta,
    BLOCK_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    plane, base, s, ok, m, u = _load_planes(m_ptr, u_ptr, n_planes, n_unary, H, W, BLOCK_P, BLOCK)
    row = (s // W)[None, :]
    col = (s % W)[None, :]
    right_ok = ok & (col + 1 < W)
    down_ok = ok & (row + 1 < H)
    m_right = tl.load(m_ptr + base + s[None, :] + 1, mask=right_ok, other=0.0).to(tl.float32)
    m_down = tl.load(m_ptr + base + s[None, :] + W, mask=down_ok, other=0.0).to(tl.float32)
    cut = tl.where(right_ok, tl.abs(m - m_right), 0.0) + tl.where(down_ok, tl.abs(m - m_down), 0.0)
    energy = tl.sum(m * u, axis=1) + beta * tl.sum(cut, axis=1)
    tl.store(e_ptr + plane, energy, mask=plane < n_planes)


@triton.jit
def _gibbs_sweep(
    m_ptr, u_ptr, out_ptr, n_planes, n_unary, H, W, beta, inv_t, parity, seed,
    BLOCK_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    plane, base, s, ok, m, u = _load_planes(m_ptr, u_ptr, n_planes, n_unary, H, W, BLOCK_P, BLOCK)
    row = (s // W)[None, :]
    col = (s % W)[None, :]
    field = u
    for k in tl.static_range(4):
        nr = row + ((k == 1) * 1 - (k == 0) * 1)
        nc = col + ((k == 3) * 1 - (k == 2) * 1)
        n_ok = ok & (nr >= 0) & (nr < H) & (nc >= 0) & (nc < W)
        mn = tl.load(m_ptr + base + nr * W + nc, mask=n_ok, other=0.0).to(tl.float32)
        field += tl.where(n_ok, beta * (1.0 - 2.0 * mn), 0.0)
    p_keep = 1.0 / (1.0 + tl.exp(field * inv_t))
    uniform = tl.rand(seed, (base + s[None, :]).to(tl.uint32))
    sampled = (uniform < p_keep).to(tl.float32)
    site = (row + col) % 2 == parity
    tl.store(out_ptr + base + s[None, :], tl.where(site, sampled, m), mask=ok)


def _check(masks: Tensor, unary: Tensor) -> None:
    if masks.dim() != 5 or unary.dim() != 4 or masks.shape[1:] != unary.shape:
        raise ValueError(
            "masks must be (K, B, C, h, w) and unary (B, C, h, w), "
            f"but got {tuple(masks.shape)} and {tuple(unary.shape)}"
        )


def _blocks(n_planes: int, hw: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK): whole planes per program, ~4096 sites (interpreter: ~65536)."""
    block = triton.next_power_of_2(hw)
    budget = 65536 if interpreting() else 4096
    block_p = max(1, min(budget // block, triton.next_power_of_2(n_planes)))
    return block_p, block


# torch.library custom ops with fake implementations, so torch.compile traces
# through them (opaque to Inductor); the checks stay in the Python wrappers.


@torch.library.custom_op("energymask::population_energy", mutates_args=())
def _population_energy_op(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    k, b, c, h, w = masks.shape
    m = masks.float().contiguous()
    u = unary.contiguous()
    energy = torch.empty(k, b, c, device=masks.device, dtype=torch.float32)
    n = k * b * c
    block_p, block = _blocks(n, h * w)
    _population_energy[(triton.cdiv(n, block_p),)](
        m, u, energy, n, b * c, h, w, float(beta), BLOCK_P=block_p, BLOCK=block
    )
    return energy


@_population_energy_op.register_fake
def _(masks, unary, beta):
    return masks.new_empty(masks.shape[:3], dtype=torch.float32)


@torch.library.custom_op("energymask::gibbs_sweep", mutates_args=())
def _gibbs_sweep_op(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    k, b, c, h, w = masks.shape
    m = masks.float().contiguous()
    u = unary.contiguous()
    out = torch.empty_like(m)
    n = k * b * c
    block_p, block = _blocks(n, h * w)
    _gibbs_sweep[(triton.cdiv(n, block_p),)](
        m, u, out, n, b * c, h, w, float(beta), 1.0 / float(temperature), int(parity), int(seed),
        BLOCK_P=block_p, BLOCK=block,
    )  # fmt: skip
    return out


@_gibbs_sweep_op.register_fake
def _(masks, unary, beta, temperature, parity, seed):
    return masks.new_empty(masks.shape, dtype=torch.float32)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """Triton version of the reference ``population_energy``: (K, B, C) float32."""
    _check(masks, unary)
    return _population_energy_op(masks, unary, float(beta))


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """Triton version of the reference ``gibbs_sweep``: new float32 masks (K, B, C, h, w)."""
    _check(masks, unary)
    return _gibbs_sweep_op(masks, unary, float(beta), float(temperature), int(parity), int(seed))
