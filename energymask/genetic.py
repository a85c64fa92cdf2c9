"""Mask populations of PB-EDropout (DESIGN.md §4): Potts model, Gibbs sampler, genetic refinement.

**Layout.** A population holds K candidate masks for each of the P = B·C
independent (sample, channel) planes. Here it is a uint8 tensor (K, P, n) in
{0, 1} over the n = h·w patches, the sites in checkerboard order (:class:`Lattice`):
the n0 sites with (row + col) even ("colour 0") first, then the others. The
public grid layout (K, B, C, h, w) float32 is converted at the edges
(:meth:`Potts.sites`, :meth:`Potts.grid`).

**Potts model.** Every N4 edge joins the two colours. With the dense 0/1
matrix A (n − n0, n0) of colour-1 → colour-0 neighbours, s_0 = m_1 A and
s_1 = m_0 Aᵀ count the kept neighbours of each site, and for binary m
([m_k ≠ m_l] = m_k + m_l − 2 m_k m_l)::

    E(m) = Σ_k m_k u_k + β Σ_{(k,l)∈N4} [m_k ≠ m_l]
         = Σ_k m_k (u_k + β deg_k) − 2β Σ_{k ∈ colour 0} m_k s_k
    f_k  = E(m | m_k = 1) − E(m | m_k = 0) = u_k + β deg_k − 2β s_k
    P(m_k = 1 | rest) = sigmoid(−f_k / T)

A Gibbs half-sweep of one colour is then one small matmul, a sigmoid and one
uniform draw per site of that colour. On CUDA with Triton the sweep and the
energy run the kernels' entry points (``energymask.kernels``) on the grid layout.

**Genetic refinement.** One generation, with fitness f (higher is better,
default f = −E):

- elitism: the ``n_elite = max(1, round(elite_fraction · K))`` fittest masks
  survive unchanged, so the best fitness never decreases;
- tournament selection: each parent is the fittest of ``tournament_size``
  masks drawn uniformly with replacement;
- spatial crossover: the child copies a random axis-aligned rectangle from
  parent 1 and the rest from parent 2;
- mutation: independent flips with rate μ (``"flip"``), or one full
  checkerboard Gibbs sweep of the child (``"gibbs"``).

Every operator works on all planes at once (no Python loop over K, B or C).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from energymask.kernels import gibbs_sweep, population_energy
from energymask.kernels.dispatch import use_triton
from energymask.kernels.reference import checkerboard

Fitness = Callable[[Tensor], Tensor]
MUTATIONS = ("flip", "gibbs")


def draw_seed(generator: torch.Generator) -> int:
    """An integer seed for a kernel call, drawn from a CPU ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


class Lattice(NamedTuple):
    """An h×w grid with its n sites in checkerboard order (colour 0 first).

    ``order`` (n,): grid index row·w + col of each site; ``inverse`` (n,): site
    of each grid index; ``rows``, ``cols`` (n,): grid coordinates of each site;
    ``split`` = n0, the number of colour-0 sites; ``adjacency`` (n − n0, n0)
    float32, 1 where a colour-1 site neighbours a colour-0 site (dense: the
    patch grids of PB-EDropout are small); ``degree`` (n,) in-grid neighbours;
    ``row_spans`` ((h + 1)², n) uint8, row a·(h+1) + b: 1 at the sites with
    min(a, b) <= row < max(a, b), for the grid lines a, b in 0..h (and
    ``col_spans`` ((w + 1)², n) the same for columns): the sides of crossover
    rectangles.
    """

    height: int
    width: int
    split: int
    order: Tensor
    inverse: Tensor
    rows: Tensor
    cols: Tensor
    adjacency: Tensor
    degree: Tensor
    row_spans: Tensor
    col_spans: Tensor


def lattice(height: int, width: int, device: torch.device | str | None = None) -> Lattice:
    """The :class:`Lattice` of an h×w grid."""
    colour0 = checkerboard(height, width, 0, device).flatten()
    order = torch.cat([colour0.nonzero(), (~colour0).nonzero()]).flatten()
    inverse = torch.argsort(order)
    rows, cols = order // width, order % width
    near = (rows[:, None] - rows).abs() + (cols[:, None] - cols).abs() == 1
    split = int(colour0.sum())
    degree = near.sum(dim=1).float()
    adjacency = near[split:, :split].float()
    row_spans, col_spans = spans(rows, height), spans(cols, width)
    return Lattice(
        height, width, split, order, inverse, rows, cols, adjacency, degree, row_spans, col_spans
    )


def spans(coords: Tensor, size: int) -> Tensor:
    """((size + 1)², n) uint8: [min(a, b) <= coords < max(a, b)] for lines a, b in 0..size."""
    lines = torch.arange(size + 1, device=coords.device)
    lo = torch.minimum(lines[:, None], lines).flatten()
    hi = torch.maximum(lines[:, None], lines).flatten()
    return ((coords >= lo[:, None]) & (coords < hi[:, None])).to(torch.uint8)


class Potts(NamedTuple):
    """The Gibbs distribution P(m) ∝ exp(−E(m)/T) of every plane; build with :func:`potts`.

    ``unary`` (B, C, h, w) float32; ``field`` (P, n) u_k + β deg_k in site order.
    """

    unary: Tensor
    field: Tensor
    beta: float
    temperature: float
    lattice: Lattice

    def sites(self, grid: Tensor) -> Tensor:
        """Grid layout (K, B, C, h, w) in {0, 1} -> site layout (K, P, n) uint8."""
        flat = grid.flatten(-2).index_select(-1, self.lattice.order)
        return flat.flatten(1, 2).to(torch.uint8)

    def grid(self, masks: Tensor) -> Tensor:
        """Site layout (K, P, n) -> grid layout (K, B, C, h, w) float32."""
        flat = masks.index_select(-1, self.lattice.inverse).float()
        return flat.view(masks.shape[0], *self.unary.shape)

    def energy(self, masks: Tensor) -> Tensor:
        """E(m) (K, P) float32 of a population (K, P, n) in site layout."""
        if use_triton(masks):
            return population_energy(self.grid(masks), self.unary, self.beta).flatten(1)
        lat = self.lattice
        m = masks.float()
        count = m[..., lat.split :] @ lat.adjacency
        pairs = torch.einsum("kpn,kpn->kp", m[..., : lat.split], count)
        return torch.einsum("kpn,pn->kp", m, self.field).sub_(pairs, alpha=2.0 * self.beta)

    def sweep(
        self, masks: Tensor, generator: torch.Generator, seeds: torch.Generator, sweeps: int = 1
    ) -> Tensor:
        """``sweeps`` checkerboard Gibbs sweeps (colour 0 then colour 1) of a population (K, P, n).

        ``generator`` draws the uniforms (device generator); ``seeds`` (CPU) the
        seeds of the Triton kernel. Returns new masks.
        """
        if use_triton(masks):
            grid = self.grid(masks)
            for _ in range(sweeps):
                for parity in (0, 1):
                    grid = gibbs_sweep(
                        grid, self.unary, self.beta, self.temperature, parity, draw_seed(seeds)
                    )
            return self.sites(grid)
        lat, k = self.lattice, masks.shape[0]
        drive = (self.field / -self.temperature).expand(k, -1, -1)  # −(u + β deg)/T
        drives = drive[..., : lat.split], drive[..., lat.split :]
        adjacencies = lat.adjacency.T.expand(k, -1, -1), lat.adjacency.expand(k, -1, -1)
        step = 2.0 * self.beta / self.temperature
        colours = list(masks.float().split([lat.split, masks.shape[-1] - lat.split], dim=-1))
        for _ in range(sweeps):
            for this, other in ((0, 1), (1, 0)):
                # −f/T = −(u + β deg)/T + (2β/T) · (kept neighbours): one batched matmul
                kept, adjacency = colours[other], adjacencies[other]
                neg_field = torch.baddbmm(drives[this], kept, adjacency, alpha=step)
                uniform = torch.rand(neg_field.shape, generator=generator, device=masks.device,
                                     dtype=neg_field.dtype)
                colours[this] = uniform.lt_(neg_field.sigmoid_())  # float 0/1
        return torch.cat(colours, dim=-1).to(torch.uint8)


def potts(unary: Tensor, beta: float, temperature: float) -> Potts:
    """:class:`Potts` model of the unary energies (B, C, h, w) with β and T."""
    unary = unary.float()
    lat = lattice(unary.shape[-2], unary.shape[-1], unary.device)
    field = unary.flatten(-2).flatten(0, 1).index_select(-1, lat.order) + beta * lat.degree
    return Potts(unary, field, float(beta), float(temperature), lat)


def random_masks(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Bernoulli(½) uint8 masks: bit 0 of each byte of random 63-bit integers."""
    total = 1
    for size in shape:
        total *= size
    device = generator.device
    words = torch.empty(-(-total // 8), dtype=torch.int64, device=device)
    return words.random_(generator=generator).view(torch.uint8)[:total].view(shape) & 1


def sample(
    model: Potts,
    population: int,
    sweeps: int,
    generator: torch.Generator,
    seeds: torch.Generator,
) -> Tensor:
    """K masks (K, P, n) uint8 by ``sweeps`` Gibbs sweeps from Bernoulli(½) starts."""
    shape = (population, model.field.shape[0], model.field.shape[1])
    return model.sweep(random_masks(shape, generator), generator, seeds, sweeps)


def tournament_select(fitness: Tensor, count: int, size: int, generator: torch.Generator) -> Tensor:
    """Indices (count, ...) into dim 0 of the population, by tournaments.

    Args:
        fitness: (K, ...) — e.g. (K, P) — higher is better.
        count: number of parents to choose. size: tournament size (>= 1).
    """
    k = fitness.shape[0]
    shape = (size, count, *fitness.shape[1:])
    contenders = torch.randint(0, k, shape, generator=generator, device=fitness.device)
    scores = torch.gather(fitness, 0, contenders.flatten(0, 1)).view(shape)
    best = scores.max(dim=0, keepdim=True).indices
    return torch.gather(contenders, 0, best).squeeze(0)


def gather_masks(masks: Tensor, index: Tensor) -> Tensor:
    """masks (K, P, n), index (m, P) -> masks[index[i, p], p] as (m, P, n)."""
    k, planes, n = masks.shape
    rows = torch.arange(planes, device=index.device).add(index, alpha=planes)
    return masks.reshape(k * planes, n).index_select(0, rows.flatten()).view(-1, planes, n)


def rectangle_crossover(
    first: Tensor, second: Tensor, lat: Lattice, generator: torch.Generator
) -> Tensor:
    """Children (m, P, n): a random rectangle of ``first``, the rest of ``second``.

    Rectangle corners are uniform over the grid lines (one uniform pair of row
    lines, one of column lines: rows of ``lat.row_spans`` / ``lat.col_spans``);
    empty rectangles are allowed (the child is then a copy of ``second``).
    uint8 masks in site layout.
    """
    count = first.numel() // first.shape[-1]
    dev = first.device
    row_pick = torch.randint(0, lat.row_spans.shape[0], (count,), generator=generator, device=dev)
    col_pick = torch.randint(0, lat.col_spans.shape[0], (count,), generator=generator, device=dev)
    rows = lat.row_spans.index_select(0, row_pick)
    cols = lat.col_spans.index_select(0, col_pick)
    return second ^ ((first ^ second) & (rows & cols).view_as(first))


def flip_mutation(masks: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """Flip every site of uint8 masks independently with probability ``rate``.

    The flipped positions (in ``masks.flatten()``) are drawn by their gaps,
    i.i.d. Geometric(rate) (``Tensor.geometric_``): exactly independent
    Bernoulli(rate) flips, from about rate · numel draws instead of numel.
    """
    if rate <= 0:
        return masks
    if rate >= 1:
        return 1 - masks
    total = masks.numel()
    flips = torch.zeros(total + 1, dtype=torch.uint8, device=masks.device)  # [total]: overflow
    last = -1.0  # position of the last flip drawn so far
    while last < total:
        expected = rate * (total - last)
        count = int(expected + 6.0 * math.sqrt(expected) + 16)  # almost always enough
        gaps = torch.empty(count, dtype=torch.float64, device=masks.device)
        positions = gaps.geometric_(rate, generator=generator).cumsum_(0).add_(last)
        flips[positions.clamp_(max=total).long()] = 1
        last = float(positions[-1])
    return masks ^ flips[:total].view_as(masks)


def evolve(
    masks: Tensor,
    model: Potts,
    generations: int,
    generator: torch.Generator,
    seeds: torch.Generator,
    elite_fraction: float = 0.25,
    tournament_size: int = 2,
    mutation_rate: float = 0.05,
    mutation: str = "flip",
    fitness: Fitness | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`refine` in the site layout: masks (K, P, n) uint8 -> (population, fitness (K, P))."""
    if mutation not in MUTATIONS:
        raise ValueError(f"mutation must be one of {MUTATIONS}, but got {mutation!r}")

    def score(population: Tensor) -> Tensor:
        if fitness is not None:
            return fitness(model.grid(population)).float().flatten(1)
        return -model.energy(population)

    k = masks.shape[0]
    n_elite = min(k, max(1, round(elite_fraction * k)))
    n_child = k - n_elite
    current = score(masks)
    for _ in range(generations):
        if n_child == 0:
            break
        elite_idx = current.topk(n_elite, dim=0).indices
        parents = tournament_select(current, 2 * n_child, tournament_size, generator)
        chosen = gather_masks(masks, torch.cat([elite_idx, parents]))
        elites, first, second = chosen.split([n_elite, n_child, n_child])
        children = rectangle_crossover(first, second, model.lattice, generator)
        if mutation == "flip":
            children = flip_mutation(children, mutation_rate, generator)
        else:
            children = model.sweep(children, generator, seeds)
        masks = torch.cat([elites, children], dim=0)
        current = torch.cat([torch.gather(current, 0, elite_idx), score(children)], dim=0)
    return masks, current


def refine(
    masks: Tensor,
    unary: Tensor,
    beta: float,
    temperature: float,
    generations: int,
    generator: torch.Generator,
    seeds: torch.Generator,
    elite_fraction: float = 0.25,
    tournament_size: int = 2,
    mutation_rate: float = 0.05,
    mutation: str = "flip",
    fitness: Fitness | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``generations`` genetic generations on a population in the grid layout.

    Args:
        masks: (K, B, C, h, w) in {0, 1}. unary: (B, C, h, w).
        generator: device generator for selection, crossover, flips and sweeps.
        seeds: CPU generator for the integer seeds of the Triton ``gibbs_sweep``.
        fitness: callable masks (K, B, C, h, w) float32 -> (K, B, C), higher is
            better; default −``population_energy(masks, unary, beta)``.

    Returns:
        (final population (K, B, C, h, w) float32, its fitness (K, B, C)).
    """
    model = potts(unary, beta, temperature)
    out, current = evolve(
        model.sites(masks), model, generations, generator, seeds,
        elite_fraction, tournament_size, mutation_rate, mutation, fitness,
    )  # fmt: skip
    return model.grid(out), current.view(out.shape[0], *unary.shape[:2])
