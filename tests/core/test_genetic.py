"""Genetic operators of PB-EDropout (energymask.genetic) on Potts populations."""

import pytest
import torch

from energymask.genetic import (
    evolve,
    flip_mutation,
    gather_masks,
    rectangle_crossover,
    tournament_select,
)
from energymask.kernels import population_energy
from energymask.kernels.lattice import lattice, to_grid, to_sites
from energymask.potts import potts, random_masks


def gens(seed: int = 0) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def test_tournament_picks_fittest_of_whole_population_with_large_tournament():
    fitness = torch.tensor([[[0.0]], [[5.0]], [[1.0]]])
    index = tournament_select(fitness, 4, 64, torch.Generator().manual_seed(0))
    assert index.shape == (4, 1, 1)
    assert (index == 1).all()


def test_rectangle_crossover_takes_each_site_from_a_parent_and_one_rectangle():
    g = torch.Generator().manual_seed(0)
    model = potts(torch.zeros(2, 3, 5, 6), 0.0, 1.0)
    first = torch.ones(50, 6, 30, dtype=torch.uint8)
    second = torch.zeros(50, 6, 30, dtype=torch.uint8)
    child = model.grid(rectangle_crossover(first, second, model.lattice, g))
    rows = child.amax(dim=-1)  # rows touched by the rectangle
    cols = child.amax(dim=-2)
    assert torch.equal(child, rows.unsqueeze(-1) * cols.unsqueeze(-2))
    assert 0 < child.mean() < 1


def test_rectangle_crossover_mixes_arbitrary_parents():
    g = torch.Generator().manual_seed(1)
    lat = lattice(4, 4)
    first = random_masks((20, 3, 16), g)
    second = random_masks((20, 3, 16), g)
    child = rectangle_crossover(first, second, lat, g)
    assert ((child == first) | (child == second)).all()


def test_flip_mutation_rate():
    masks = torch.zeros(20000, dtype=torch.uint8)
    flipped = flip_mutation(masks, 0.2, torch.Generator().manual_seed(0))
    assert flipped.dtype == torch.uint8
    assert abs(flipped.float().mean().item() - 0.2) < 0.02
    assert torch.equal(flip_mutation(masks, 0.0, torch.Generator()), masks)
    assert (flip_mutation(masks, 1.0, torch.Generator()) == 1).all()


def test_flip_mutation_is_independent_per_site():
    # Geometric gaps must not favour any position: per-column flip rates and
    # the pair rate of neighbouring sites match Bernoulli(0.3).
    masks = torch.ones(4000, 6, dtype=torch.uint8)
    flipped = 1 - flip_mutation(masks, 0.3, torch.Generator().manual_seed(1)).float()
    assert (flipped.mean(dim=0) - 0.3).abs().max() < 0.03
    assert abs((flipped[:, 1:] * flipped[:, :-1]).mean().item() - 0.09) < 0.01


def test_gather_masks_shape():
    masks = torch.rand(4, 6, 25)
    index = torch.tensor([[0, 1, 2, 3, 0, 1], [3, 3, 3, 3, 3, 3]])
    got = gather_masks(masks, index)
    assert got.shape == (2, 6, 25)
    assert torch.equal(got[0, 2], masks[2, 2]) and torch.equal(got[1], masks[3])


def refine(masks, unary, beta, temperature, generations, generator, seeds, **options):
    """Grid layout in and out around :func:`evolve`, as PB-EDropout calls it."""
    model = potts(unary, beta, temperature)
    out, fit = evolve(model.sites(masks), model, generations, generator, seeds, **options)
    return model.grid(out), fit.view(out.shape[0], *unary.shape[:2])


@pytest.mark.parametrize("mutation", ["flip", "gibbs"])
def test_evolve_never_worse_than_best_initial(mutation):
    torch.manual_seed(0)
    unary = torch.randn(3, 4, 5, 5)
    masks = (torch.rand(8, 3, 4, 5, 5) < 0.5).float()
    before = population_energy(masks, unary, 0.5).min(dim=0).values
    out, fit = refine(masks, unary, 0.5, 0.5, 5, *gens(), mutation=mutation, mutation_rate=0.3)
    after = population_energy(out, unary, 0.5)
    torch.testing.assert_close(-fit, after, atol=1e-5, rtol=1e-5)
    assert (after.min(dim=0).values <= before + 1e-5).all()
    assert ((out == 0) | (out == 1)).all()


def test_evolve_custom_fitness_and_bad_mutation():
    unary = torch.zeros(1, 1, 4, 4)
    masks = (torch.rand(6, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def kept(m):
        return m.sum(dim=(-2, -1))

    out, fit = refine(masks, unary, 0.0, 1.0, 10, *gens(), fitness=kept, mutation_rate=0.2)
    assert fit.max() >= kept(masks).max()
    torch.testing.assert_close(fit, kept(out))
    with pytest.raises(ValueError, match="mutation must be one of"):
        refine(masks, unary, 0.0, 1.0, 1, *gens(), mutation="swap")


def test_rectangle_crossover_same_rectangles_in_both_site_orders():
    # the rectangles come from grid coordinates: same seed, same children in either layout
    g = torch.Generator().manual_seed(2)
    first = random_masks((8, 3, 5, 7), g).view(8, 1, 3, 5, 7)
    second = random_masks((8, 3, 5, 7), g).view(8, 1, 3, 5, 7)
    children = []
    for grid_order in (False, True):
        lat = lattice(5, 7, grid_order=grid_order)
        child = rectangle_crossover(to_sites(first, lat), to_sites(second, lat), lat,
                                    torch.Generator().manual_seed(3))
        children.append(to_grid(child, lat, (1, 3)))
    assert torch.equal(children[0], children[1])
    # a row lies in a span [min(a, b), max(a, b)) of lines a, b uniform in 0..h w.p.
    # 2 (r + 1)(h − r) / (h + 1)²: rows 0..4 of h = 5 -> 10, 16, 18, 16, 10 over 36;
    # it shows in the child when the column span is not empty too: w.p. 1 − 1/8 (w = 7)
    big = rectangle_crossover(torch.ones(4000, 1, 35, dtype=torch.uint8),
                              torch.zeros(4000, 1, 35, dtype=torch.uint8),
                              lattice(5, 7, grid_order=True), torch.Generator().manual_seed(4))
    rows = big.view(4000, 5, 7).amax(-1).float().mean(0)
    want = torch.tensor([10, 16, 18, 16, 10]) / 36 * 7 / 8
    assert torch.allclose(rows, want, atol=0.03)
