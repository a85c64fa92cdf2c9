"""Genetic refinement of PB-EDropout's mask populations (docs/design.md §4).

One generation, on populations (K, P, n) uint8 in the site layout of a
:class:`energymask.potts.Potts` model, with fitness f (higher is better,
default f = −E):

- elitism: the ``n_elite = max(1, round(elite_fraction · K))`` fittest masks
  survive unchanged, so the best fitness never decreases;
- tournament selection: each parent is the fittest of ``tournament_size``
  masks drawn uniformly with replacement;
- spatial crossover: the child copies a random axis-aligned rectangle from
  parent 1 and the rest from parent 2;
- mutation: independent flips with rate μ (``"flip"``), or one full
  checkerboard Gibbs sweep of the child (``"gibbs"``).

Every operator works on all planes at once (no Python loop over K, B or C),
and in any site order (the rectangles come from the sites' grid coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from energymask.kernels import Lattice
from energymask.potts import Potts

Fitness = Callable[[Tensor], Tensor]
MUTATIONS = ("flip", "gibbs")


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

    Rectangle corners are uniform over the grid lines: one uniform pair (a, b)
    of row lines in 0..h (drawn as one index a·(h+1) + b), one of column lines;
    the rectangle holds the sites with min(a, b) <= row < max(a, b) (columns
    alike), compared on ``lat.rows`` / ``lat.cols``: O(m·P·n). Empty rectangles
    are allowed (the child is then a copy of ``second``). uint8 masks in site layout.
    """
    count = first.numel() // first.shape[-1]
    dev = first.device
    inside = None
    for coords, size in ((lat.rows, lat.height), (lat.cols, lat.width)):
        pick = torch.randint(0, (size + 1) ** 2, (count,), generator=generator, device=dev)
        a, b = pick // (size + 1), pick % (size + 1)
        lo, hi = torch.minimum(a, b)[:, None], torch.maximum(a, b)[:, None]
        span = (coords >= lo) & (coords < hi)
        inside = span if inside is None else inside & span
    return second ^ ((first ^ second) & inside.view_as(first).to(torch.uint8))


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
    """``generations`` genetic generations of a population (K, P, n) uint8 in site layout.

    Args:
        model: the :class:`Potts` model (layout, energy, sweep of "gibbs" mutation).
        generator: device generator for selection, crossover, flips and sweeps.
        seeds: CPU generator for the integer seeds of the Triton Gibbs sweep.
        fitness: callable masks (K, B, C, h, w) float32 -> (K, B, C), higher is
            better; default −E(m).

    Returns:
        (final population (K, P, n) uint8, its fitness (K, P)).
    """
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


__all__ = ["MUTATIONS", "evolve", "flip_mutation", "gather_masks", "rectangle_crossover",
           "tournament_select"]
