"""Genetic refinement of binary mask populations (PB-EDropout, DESIGN.md §4, step 2).

A population is a tensor ``masks`` of shape (K, B, C, h, w) with values in {0, 1}:
K candidates for each of the B·C independent (sample, channel) planes. Every
operator works on all planes at once (no Python loop over B or C).

One generation, with fitness f (higher is better, default f = −E):

- elitism: the ``n_elite = max(1, round(elite_fraction · K))`` fittest masks
  survive unchanged, so the best fitness never decreases;
- tournament selection: each parent is the fittest of ``tournament_size``
  masks drawn uniformly with replacement;
- spatial crossover: the child copies a random axis-aligned rectangle from
  parent 1 and the rest from parent 2;
- mutation: independent flips with rate μ (``"flip"``), or one full
  checkerboard Gibbs sweep of the child (``"gibbs"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from energymask.kernels import gibbs_sweep, population_energy

Fitness = Callable[[Tensor], Tensor]
MUTATIONS = ("flip", "gibbs")


def draw_seed(generator: torch.Generator) -> int:
    """An integer seed for a kernel call, drawn from a CPU ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def tournament_select(
    fitness: Tensor, count: int, size: int, generator: torch.Generator
) -> Tensor:
    """Indices (count, B, C) into dim 0 of the population, by tournaments.

    Args:
        fitness: (K, B, C), higher is better.
        count: number of parents to choose. size: tournament size (>= 1).
    """
    k = fitness.shape[0]
    shape = (size, count, *fitness.shape[1:])
    contenders = torch.randint(0, k, shape, generator=generator, device=fitness.device)
    scores = torch.gather(fitness.unsqueeze(1).expand(k, count, *fitness.shape[1:]), 0, contenders)
    best = scores.argmax(dim=0, keepdim=True)
    return torch.gather(contenders, 0, best).squeeze(0)


def gather_masks(masks: Tensor, index: Tensor) -> Tensor:
    """masks (K, B, C, h, w), index (n, B, C) -> (n, B, C, h, w)."""
    h, w = masks.shape[-2:]
    full = index[..., None, None].expand(*index.shape, h, w)
    return torch.gather(masks, 0, full)


def rectangle_crossover(first: Tensor, second: Tensor, generator: torch.Generator) -> Tensor:
    """Children (n, B, C, h, w): a random rectangle of ``first``, the rest of ``second``.

    Rectangle corners are uniform over the grid lines; empty rectangles are
    allowed (the child is then a copy of ``second``).
    """
    n, b, c, h, w = first.shape
    dev = first.device
    rows = torch.randint(0, h + 1, (2, n, b, c, 1, 1), generator=generator, device=dev)
    cols = torch.randint(0, w + 1, (2, n, b, c, 1, 1), generator=generator, device=dev)
    r0, r1 = rows.min(dim=0).values, rows.max(dim=0).values
    c0, c1 = cols.min(dim=0).values, cols.max(dim=0).values
    r = torch.arange(h, device=dev).view(h, 1)
    q = torch.arange(w, device=dev).view(1, w)
    inside = (r >= r0) & (r < r1) & (q >= c0) & (q < c1)
    return torch.where(inside, first, second)


def flip_mutation(masks: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """Flip every site independently with probability ``rate``."""
    if rate <= 0:
        return masks
    flips = torch.rand(masks.shape, generator=generator, device=masks.device) < rate
    return torch.where(flips, 1.0 - masks, masks)


def full_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, seeds: torch.Generator
) -> Tensor:
    """One checkerboard Gibbs sweep (colour 0 then colour 1) via the dispatching kernel."""
    masks = gibbs_sweep(masks, unary, beta, temperature, 0, draw_seed(seeds))
    return gibbs_sweep(masks, unary, beta, temperature, 1, draw_seed(seeds))


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
    """Run ``generations`` genetic generations on a population.

    Args:
        masks: (K, B, C, h, w) float32 in {0, 1}. unary: (B, C, h, w).
        generator: device generator for selection, crossover and flips.
        seeds: CPU generator for the integer seeds of ``gibbs_sweep``.
        fitness: callable masks (K, B, C, h, w) -> (K, B, C), higher is better;
            default −``population_energy(masks, unary, beta)``.

    Returns:
        (final population (K, B, C, h, w), its fitness (K, B, C)).
    """
    if mutation not in MUTATIONS:
        raise ValueError(f"mutation must be one of {MUTATIONS}, but got {mutation!r}")

    def score(population: Tensor) -> Tensor:
        if fitness is not None:
            return fitness(population).float()
        return -population_energy(population, unary, beta)

    k = masks.shape[0]
    n_elite = min(k, max(1, round(elite_fraction * k)))
    n_child = k - n_elite
    current = score(masks)
    for _ in range(generations):
        if n_child == 0:
            break
        elite_idx = current.topk(n_elite, dim=0).indices
        elites = gather_masks(masks, elite_idx)
        parents = tournament_select(current, 2 * n_child, tournament_size, generator)
        first, second = gather_masks(masks, parents).chunk(2, dim=0)
        children = rectangle_crossover(first, second, generator)
        if mutation == "flip":
            children = flip_mutation(children, mutation_rate, generator)
        else:
            children = full_sweep(children, unary, beta, temperature, seeds)
        child_fit = score(children)
        masks = torch.cat([elites, children], dim=0)
        current = torch.cat([torch.gather(current, 0, elite_idx), child_fit], dim=0)
    return masks, current
