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
  colours; with ``neighbours`` (n, 4), the index of each site's up to four
  neighbours inside the other colour's block (padded with an always-0 slot),
  s_k = Σ_{l ∈ N4(k)} m_l is a gather and a sum of four, and for binary m
  ([m_k ≠ m_l] = m_k + m_l − 2 m_k m_l)::

      E(m) = Σ_k m_k (u_k + β deg_k) − 2β Σ_{k ∈ colour 0} m_k s_k
      f_k  = u_k + β deg_k − 2β s_k,   P(m_k = 1 | rest) = sigmoid(−f_k / T)

  so a Gibbs half-sweep of one colour is a gather of 4 neighbours per site, a
  sigmoid and one uniform draw per site (:func:`site_sweep`): O(n) time and
  memory per plane. It computes the same model as
  :func:`energymask.kernels.reference.gibbs_sweep` (docs/design.md §4).
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
    ``degree`` (n,) in-grid neighbours. Checkerboard order only: ``split`` =
    n0, the number of colour-0 sites, and ``neighbours`` (n, 4) int64: for a
    site of one colour, the positions of its up, down, left and right
    neighbours inside the other colour's block (sites split..n−1 for colour 0,
    0..split−1 for colour 1, counted from 0), and that block's size (an extra,
    always-0 slot) where the neighbour is off the grid. In grid order
    ``split`` is 0 and ``neighbours`` empty. Every field is O(n).
    """

    height: int
    width: int
    grid_order: bool
    split: int
    order: Tensor
    inverse: Tensor
    rows: Tensor
    cols: Tensor
    neighbours: Tensor
    degree: Tensor


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
        neighbours = torch.zeros(0, 4, dtype=torch.long, device=device)
    else:
        neighbours = neighbour_table(rows, cols, inverse, (height, width), split)
    return Lattice(height, width, grid_order, split, order, inverse, rows, cols, neighbours,
                   degree)  # fmt: skip


def neighbour_table(
    rows: Tensor, cols: Tensor, inverse: Tensor, shape: tuple[int, int], split: int
) -> Tensor:
    """(n, 4) int64 ``Lattice.neighbours`` of the checkerboard order (see :class:`Lattice`)."""
    height, width = shape
    n = rows.shape[0]
    colour0 = torch.arange(n, device=rows.device) < split
    block_start = torch.where(colour0, split, 0)[:, None]  # where the other colour starts
    block_size = torch.where(colour0, n - split, split)[:, None]
    nr = rows[:, None] + torch.tensor([-1, 1, 0, 0], device=rows.device)
    nc = cols[:, None] + torch.tensor([0, 0, -1, 1], device=rows.device)
    inside = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
    site = inverse[(nr.clamp(0, height - 1) * width + nc.clamp(0, width - 1))]
    return torch.where(inside, site - block_start, block_size)


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


def neighbour_sum(other: Tensor, neighbours: Tensor) -> Tensor:
    """Sum over the 4 neighbours: ``other`` (..., n_other), ``neighbours`` (n_this, 4).

    Returns (..., n_this) in the dtype of ``other``. Pads ``other`` with one 0
    (the off-grid slot), gathers, sums four: O(n).
    """
    padded = torch.cat([other, other.new_zeros(*other.shape[:-1], 1)], dim=-1)
    rows = padded.numel() // padded.shape[-1]
    # on a 2D view: ~10x faster than index_select on the last dim of a 3D tensor (CPU)
    gathered = padded.view(rows, -1).index_select(1, neighbours.T.flatten())
    count = gathered.view(rows, 4, neighbours.shape[0]).sum(dim=1)  # (rows, n_this)
    return count.view(*other.shape[:-1], neighbours.shape[0])


def site_energy(masks: Tensor, lat: Lattice, field: Tensor, beta: float) -> Tensor:
    """E(m) (K, P) float32 of masks (K, P, n) in checkerboard order; ``field`` = u + β deg."""
    m = masks.float()
    count = neighbour_sum(m[..., lat.split :], lat.neighbours[: lat.split])
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
    """``sweeps`` Gibbs sweeps (colour 0 then 1) of masks (K, P, n) in checkerboard order.

    O(K·P·n) time and memory per sweep (a 4-neighbour gather per site).
    """
    k = masks.shape[0]
    drive = (field / -temperature).expand(k, -1, -1)  # −(u + β deg)/T
    drives = drive[..., : lat.split], drive[..., lat.split :]
    tables = lat.neighbours[: lat.split], lat.neighbours[lat.split :]
    step = 2.0 * beta / temperature
    colours = list(masks.float().split([lat.split, masks.shape[-1] - lat.split], dim=-1))
    for _ in range(sweeps):
        for this, other in ((0, 1), (1, 0)):
            # −f/T = −(u + β deg)/T + (2β/T) · (kept neighbours)
            count = neighbour_sum(colours[other], tables[this])
            neg_field = torch.add(drives[this], count, alpha=step)
            uniform = torch.rand(neg_field.shape, generator=generator, device=masks.device,
                                 dtype=neg_field.dtype)  # not the default dtype
            colours[this] = uniform.lt_(neg_field.sigmoid_())  # float 0/1
    return torch.cat(colours, dim=-1).to(torch.uint8)


__all__ = ["Lattice", "draw_seed", "lattice", "neighbour_sum", "site_energy", "site_sweep",
           "to_grid", "to_sites"]
