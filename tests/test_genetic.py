import pytest
import torch
from energymask.kernels import population_energy

from energymask.genetic import (
    flip_mutation,
    gather_masks,
    rectangle_crossover,
    refine,
    tournament_select,
)


def gens(seed: int = 0) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def test_tournament_picks_fittest_of_whole_population_with_large_tournament():
    fitness = torch.tensor([[[0.0]], [[5.0]], [[1.0]]])
    index = tournament_select(fitness, 4, 64, torch.Generator().manual_seed(0))
    assert index.shape == (4, 1, 1)
    assert (index == 1).all()


def test_rectangle_crossover_takes_each_site_from_a_parent_and_one_rectangle():
    g = torch.Generator().manual_seed(0)
    first = torch.ones(50, 2, 3, 5, 6)
    second = torch.zeros(50, 2, 3, 5, 6)
    child = rectangle_crossover(first, second, g)
    rows = child.amax(dim=-1)  # rows touched by the rectangle
    cols = child.amax(dim=-2)
    assert torch.equal(child, rows.unsqueeze(-1) * cols.unsqueeze(-2))
    assert 0 < child.mean() < 1


def test_flip_mutation_rate():
    masks = torch.zeros(20000)
    flipped = flip_mutation(masks, 0.2, torch.Generator().manual_seed(0))
    assert abs(flipped.mean().item() - 0.2) < 0.02
    assert torch.equal(flip_mutation(masks, 0.0, torch.Generator()), masks)


def test_gather_masks_shape():
    masks = torch.rand(4, 2, 3, 5, 5)
    index = torch.zeros(2, 2, 3, dtype=torch.long)
    assert torch.equal(gather_masks(masks, index)[1], masks[0])


@pytest.mark.parametrize("mutation", ["flip", "gibbs"])
def test_refine_never_worse_than_best_initial(mutation):
    torch.manual_seed(0)
    unary = torch.randn(3, 4, 5, 5)
    masks = (torch.rand(8, 3, 4, 5, 5) < 0.5).float()
    before = population_energy(masks, unary, 0.5).min(dim=0).values
    out, fit = refine(masks, unary, 0.5, 0.5, 5, *gens(), mutation=mutation, mutation_rate=0.3)
    after = population_energy(out, unary, 0.5)
    assert torch.allclose(-fit, after)
    assert (after.min(dim=0).values <= before + 1e-5).all()
    assert ((out == 0) | (out == 1)).all()


def test_refine_custom_fitness_and_bad_mutation():
    unary = torch.zeros(1, 1, 4, 4)
    masks = (torch.rand(6, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def kept(m):
        return m.sum(dim=(-2, -1))

    out, fit = refine(masks, unary, 0.0, 1.0, 10, *gens(), fitness=kept, mutation_rate=0.2)
    assert fit.max() >= kept(masks).max()
    with pytest.raises(ValueError, match="mutation must be one of"):
        refine(masks, unary, 0.0, 1.0, 1, *gens(), mutation="swap")
