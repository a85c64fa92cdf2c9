"""Triton kernels for PB-EDropout's Potts energy and Gibbs sweep (docs/design.md §4, §5).

Must match :func:`energymask.kernels.reference.population_energy` and, in
distribution, :func:`energymask.kernels.reference.gibbs_sweep`. Masks stay in
their own dtype end to end (uint8 in PB-EDropout): loaded, converted in
registers, stored back in the same dtype, no float32 copy per sweep.

A program holds BLOCK_P (k, b, c) mask planes and a chunk of BLOCK sites of
each. The energy loops over the chunks of its planes, so the sum is
deterministic and in-program (no atomics); the sweep has one program per
(plane group, chunk). Random numbers: ``tl.rand(seed, global site index)``;
seed and parity are not specialised (``do_not_specialize``), so every sweep
reuses one compiled kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import interpreting
from .launch import launch


@triton.jit
def _population_energy(
    m_ptr, u_ptr, e_ptr, n_planes, n_unary, H, W, beta,
    BLOCK_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    plane = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = plane < n_planes
    HW = H * W
    base = plane[:, None] * HW
    u_base = (plane % n_unary)[:, None] * HW
    unary = tl.zeros([BLOCK_P], dtype=tl.float32)
    cut = tl.zeros([BLOCK_P], dtype=tl.float32)
    for s0 in range(0, HW, BLOCK):
        s = s0 + tl.arange(0, BLOCK)
        ok = p_ok[:, None] & (s < HW)[None, :]
        row = (s // W)[None, :]
        col = (s % W)[None, :]
        right_ok = ok & (col + 1 < W)
        down_ok = ok & (row + 1 < H)
        m = tl.load(m_ptr + base + s[None, :], mask=ok, other=0).to(tl.float32)
        u = tl.load(u_ptr + u_base + s[None, :], mask=ok, other=0.0).to(tl.float32)
        m_right = tl.load(m_ptr + base + s[None, :] + 1, mask=right_ok, other=0).to(tl.float32)
        m_down = tl.load(m_ptr + base + s[None, :] + W, mask=down_ok, other=0).to(tl.float32)
        unary += tl.sum(m * u, axis=1)
        cut += tl.sum(
            tl.where(right_ok, tl.abs(m - m_right), 0.0)
            + tl.where(down_ok, tl.abs(m - m_down), 0.0),
            axis=1,
        )
    tl.store(e_ptr + plane, unary + beta * cut, mask=p_ok)


@triton.jit(do_not_specialize=["parity", "seed"])
def _gibbs_sweep(
    m_ptr, u_ptr, out_ptr, n_planes, n_unary, H, W, beta, inv_t, parity, seed,
    BLOCK_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    plane = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    HW = H * W
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = (plane < n_planes)[:, None] & (s < HW)[None, :]
    base = plane[:, None] * HW
    row = (s // W)[None, :]
    col = (s % W)[None, :]
    m = tl.load(m_ptr + base + s[None, :], mask=ok, other=0)
    field = tl.load(u_ptr + (plane % n_unary)[:, None] * HW + s[None, :], mask=ok, other=0.0)
    field = field.to(tl.float32)
    for k in tl.static_range(4):
        nr = row + ((k == 1) * 1 - (k == 0) * 1)
        nc = col + ((k == 3) * 1 - (k == 2) * 1)
        n_ok = ok & (nr >= 0) & (nr < H) & (nc >= 0) & (nc < W)
        mn = tl.load(m_ptr + base + nr * W + nc, mask=n_ok, other=0).to(tl.float32)
        field += tl.where(n_ok, beta * (1.0 - 2.0 * mn), 0.0)
    p_keep = 1.0 / (1.0 + tl.exp(field * inv_t))
    uniform = tl.rand(seed, (base + s[None, :]).to(tl.uint32))
    sampled = (uniform < p_keep).to(m.dtype)
    site = (row + col) % 2 == parity
    tl.store(out_ptr + base + s[None, :], tl.where(site, sampled, m), mask=ok)


def _check(masks: Tensor, unary: Tensor) -> None:
    if masks.dim() != 5 or unary.dim() != 4 or masks.shape[1:] != unary.shape:
        raise ValueError(
            "masks must be (K, B, C, h, w) and unary (B, C, h, w), "
            f"but got {tuple(masks.shape)} and {tuple(unary.shape)}"
        )


class Tile(NamedTuple):
    """BLOCK_P planes × BLOCK sites per program, ``num_warps``."""

    block_p: int
    block: int
    num_warps: int = 4


TILE_SITES = 1024  # BLOCK_P · BLOCK: 8 sites per thread at 4 warps, no spills
BLOCKS: Tile | None = None  # override for tests of the tiling
GPU_TILING = not interpreting()  # the interpreter runs whole planes unless a test sets it


def gpu_tile(n_planes: int, hw: int) -> Tile:
    """Whole planes up to 1024 sites (larger grids in chunks), several planes per program."""
    block = min(triton.next_power_of_2(hw), 1024)
    return Tile(max(1, min(TILE_SITES // block, triton.next_power_of_2(n_planes))), block)


def _tile(n_planes: int, hw: int) -> Tile:
    if BLOCKS is not None:
        return BLOCKS
    if GPU_TILING:
        return gpu_tile(n_planes, hw)
    block = triton.next_power_of_2(hw)  # interpreter: few, large programs
    return Tile(max(1, min(65536 // block, triton.next_power_of_2(n_planes))), block)


def energy_launch(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """Launch :func:`_population_energy`: (K, B, C) float32."""
    k, b, c, h, w = masks.shape
    m, u = masks.contiguous(), unary.contiguous()
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
    energy = torch.empty(k, b, c, device=masks.device, dtype=torch.float32)
    n = k * b * c
    tile = _tile(n, h * w)
    launch(
        _population_energy, (triton.cdiv(n, tile.block_p),),
        (m, u, energy, n, b * c, h, w, float(beta)),
        num_warps=tile.num_warps, BLOCK_P=tile.block_p, BLOCK=tile.block,
    )  # fmt: skip
    return energy


def sweep_launch(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """Launch :func:`_gibbs_sweep`: new masks, same shape and dtype."""
    k, b, c, h, w = masks.shape
    m, u = masks.contiguous(), unary.contiguous()
    out = torch.empty_like(m)
    n = k * b * c
    tile = _tile(n, h * w)
    launch(
        _gibbs_sweep, (triton.cdiv(n, tile.block_p), triton.cdiv(h * w, tile.block)),
        (m, u, out, n, b * c, h, w, float(beta), 1.0 / float(temperature), int(parity),
         int(seed) % 2**31),
        num_warps=tile.num_warps, BLOCK_P=tile.block_p, BLOCK=tile.block,
    )  # fmt: skip
    return out


# torch.library custom ops with fake implementations, so torch.compile traces
# through them (opaque to Inductor); the checks stay in the Python wrappers.


@torch.library.custom_op("energymask::population_energy", mutates_args=())
def _population_energy_op(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    return energy_launch(masks, unary, beta)


@_population_energy_op.register_fake
def _(masks, unary, beta):
    return masks.new_empty(masks.shape[:3], dtype=torch.float32)


@torch.library.custom_op("energymask::gibbs_sweep", mutates_args=())
def _gibbs_sweep_op(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    return sweep_launch(masks, unary, beta, temperature, parity, seed)


@_gibbs_sweep_op.register_fake
def _(masks, unary, beta, temperature, parity, seed):
    return torch.empty_like(masks, memory_format=torch.contiguous_format)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """Triton version of the reference ``population_energy``: (K, B, C) float32."""
    _check(masks, unary)
    return _population_energy_op(masks, unary, float(beta))


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """Triton version of the reference ``gibbs_sweep``: new masks, dtype of ``masks``."""
    _check(masks, unary)
    return _gibbs_sweep_op(masks, unary, float(beta), float(temperature), int(parity), int(seed))


__all__ = ["BLOCKS", "TILE_SITES", "Tile", "energy_launch", "gibbs_sweep", "gpu_tile",
           "population_energy", "sweep_launch"]
