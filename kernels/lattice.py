"""Mask layouts of a PB-EDropout population, and the Potts sweep in the site layout.

A population holds K candidate masks for each of the P = B·C independent
(sample, channel) planes, as a uint8 tensor (K, P, n) in {0, 1} over the
n = h·w patches, in one of two site orders (:class:`Lattice`), chosen once
per model by :func:`energymask.kernels.potts_lattice`:

- **grid order** (row·w + col) where the Triton kernels run: (K, P, n) is a
  view of the (K, B, C, h, w) layout they read, so nothing is converted per
  sweep;
- **checkerboard order** for the PyTorch path: the n0 sites with (row + col)
  even ("colour 0") first, then the others. Every N4 edge joins the two
  colours; with the dense 0/1 matrix A (n − n0, n0) of colour-1 → colour-0
  neighbours, s_0 = m_1 A and s_1 = m_0 Aᵀ count the kept neighbours, and for
  binary m ([m_k ≠ m_l] = m_k + m_l − 2 m_k m_l)::

      E(m) = Σ_k m_k (u_k + β deg_k) − 2β Σ_{k ∈ colour 0} m_k s_k
      f_k  = u_k + β deg_k − 2β s_k,   P(m_k = 1 | rest) = sigmoid(−f_k / T)

  so a Gibbs half-sweep of one colour is one small batched matmul, a sigmoid
  and one uniform draw per site (:func:`site_sweep`). It computes the same
  model as :func:`energymask.kernels.reference.gibbs_sweep` (docs/design.md §4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .reference import checkerboard


class Lattice(NamedTuple):
    """An h×w grid with its n sites in grid or checkerboard order.

    ``order`` (n,): grid index row·w + col of each site; ``inverse`` (n,): site
    of each grid index; ``rows``, ``cols`` (n,): grid coordinates of each site;
    ``degree`` (n,) in-grid neighbours; ``row_spans`` ((h + 1)², n) uint8, row
    a·(h+1) + b: 1 at the sites with min(a, b) <= row < max(a, b), for the grid
    lines a, b in 0..h (and ``col_spans`` ((w + 1)², n) the same for columns):
    the sides of crossover rectangles. Checkerboard order only: ``split`` = n0,
    the number of colour-0 sites, and ``adjacency`` (n − n0, n0) float32, 1
    where a colour-1 site neighbours a colour-0 site (dense: the patch grids of
    PB-EDropout are small); in grid order ``split`` is 0 and ``adjacency`` empty.
    """

    height: int
    width: int
    grid_order: bool
    split: int
    order: Tensor
    inverse: Tensor
    rows: Tensor
    cols: Tensor
    adjacency: Tensor
    degree: Tensor
    row_spans: Tensor
    col_spans: Tensor


def lattice(
    height: int, width: int, device: torch.device | str | None = None, grid_order: bool = False
) -> Lattice:
    """The :class:`Lattice` of an h×w grid (checkerboard order unless ``grid_order``)."""
    if grid_order:
        order = torch.arange(height * width, device=device)
        split = 0
    else:
        colour0 = checkerboard(height, width, 0, device).flatten()
        order = torch.cat([colour0.nonzero(), (~colour0).nonzero()]).flatten()
        split = int(colour0.sum())
    inverse = torch.argsort(order)
    rows, cols = order // width, order % width
    degree = ((rows > 0).int() + (rows < height - 1).int() + (cols > 0).int()
              + (cols < width - 1).int()).float()  # fmt: skip
    if grid_order:
        adjacency = torch.zeros(0, 0, device=device)
    else:
        r0, c0, r1, c1 = rows[:split], cols[:split], rows[split:], cols[split:]
        adjacency = ((r1[:, None] - r0).abs() + (c1[:, None] - c0).abs() == 1).float()
    return Lattice(height, width, grid_order, split, order, inverse, rows, cols, adjacency,
                   degree, spans(rows, height), spans(cols, width))  # fmt: skip


def spans(coords: Tensor, size: int) -> Tensor:
    """((size + 1)², n) uint8: [min(a, b) <= coords < max(a, b)] for lines a, b in 0..size."""
    lines = torch.arange(size + 1, device=coords.device)
    lo = torch.minimum(lines[:, None], lines).flatten()
    hi = torch.maximum(lines[:, None], lines).flatten()
    return ((coords >= lo[:, None]) & (coords < hi[:, None])).to(torch.uint8)


def to_sites(grid: Tensor, lat: Lattice) -> Tensor:
    """Grid layout (K, B, C, h, w) in {0, 1} -> site layout (K, P, n) uint8."""
    flat = grid.flatten(-2)
    if not lat.grid_order:
        flat = flat.index_select(-1, lat.order)
    return flat.flatten(1, 2).to(torch.uint8)


def to_grid(masks: Tensor, lat: Lattice, planes: tuple[int, int]) -> Tensor:
    """Site layout (K, P, n) -> grid layout (K, B, C, h, w), same dtype; ``planes`` = (B, C)."""
    flat = masks if lat.grid_order else masks.index_select(-1, lat.inverse)
    return flat.view(masks.shape[0], *planes, lat.height, lat.width)


def draw_seed(generator: torch.Generator) -> int:
    """An integer seed for a kernel call, drawn from a CPU ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def site_energy(masks: Tensor, lat: Lattice, field: Tensor, beta: float) -> Tensor:
    """E(m) (K, P) float32 of masks (K, P, n) in checkerboard order; ``field`` = u + β deg."""
    m = masks.float()
    count = m[..., lat.split :] @ lat.adjacency
    pairs = torch.einsum("kpn,kpn->kp", m[..., : lat.split], count)
    return torch.einsum("kpn,pn->kp", m, field).sub_(pairs, alpha=2.0 * beta)


def site_sweep(
    masks: Tensor,
    lat: Lattice,
    field: Tensor,
    beta: float,
    temperature: float,
    generator: torch.Generator,
    sweeps: int,
) -> Tensor:
    """``sweeps`` Gibbs sweeps (colour 0 then 1) of masks (K, P, n) in checkerboard order."""
    k = masks.shape[0]
    drive = (field / -temperature).expand(k, -1, -1)  # −(u + β deg)/T
    drives = drive[..., : lat.split], drive[..., lat.split :]
    adjacencies = lat.adjacency.T.expand(k, -1, -1), lat.adjacency.expand(k, -1, -1)
    step = 2.0 * beta / temperature
    colours = list(masks.float().split([lat.split, masks.shape[-1] - lat.split], dim=-1))
    for _ in range(sweeps):
        for this, other in ((0, 1), (1, 0)):
            # −f/T = −(u + β deg)/T + (2β/T) · (kept neighbours): one batched matmul
            neg_field = torch.baddbmm(drives[this], colours[other], adjacencies[other], alpha=step)
            uniform = torch.rand(neg_field.shape, generator=generator, device=masks.device,
                                 dtype=neg_field.dtype)  # not the default dtype
            colours[this] = uniform.lt_(neg_field.sigmoid_())  # float 0/1
    return torch.cat(colours, dim=-1).to(torch.uint8)
