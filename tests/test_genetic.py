import pytest
import torch

import energymask.kernels as kernels
from energymask.genetic import (
    flip_mutation,
    gather_masks,
    lattice,
    potts,
    random_masks,
    rectangle_crossover,
    refine,
    sample,
    tournament_select,
)
from energymask.kernels import population_energy
from energymask.kernels.reference import checkerboard, conditional_field


def gens(seed: int = 0) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def random_grid(k=3, b=2, c=3, h=5, w=4, seed=0):
    return (torch.rand(k, b, c, h, w, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def test_lattice_orders_colours_and_links_neighbours():
    lat = lattice(3, 4)
    assert lat.split == 6 and lat.order.shape == (12,)
    assert checkerboard(3, 4, 0).flatten()[lat.order[:6]].all()
    assert torch.equal(lat.order[lat.inverse], torch.arange(12))
    assert torch.equal(lat.rows * 4 + lat.cols, lat.order)
    corner = int(lat.inverse[0])  # grid (0, 0): colour 0, neighbours (0, 1) and (1, 0)
    linked = lat.order[lat.split + lat.adjacency[:, corner].nonzero().flatten()]
    assert sorted(linked.tolist()) == [1, 4]
    assert lat.degree[corner] == 2 and lat.degree.sum() == 2 * lat.adjacency.sum()
    assert lat.row_spans.shape == (16, 12) and lat.col_spans.shape == (25, 12)
    span = lat.row_spans[3 * 4 + 1]  # grid lines 3 and 1: rows 1 and 2
    assert torch.equal(span.bool(), (lat.rows >= 1) & (lat.rows < 3))
    assert torch.equal(lat.col_spans[2 * 5 + 2], torch.zeros(12, dtype=torch.uint8))


def test_site_layout_round_trip_and_energy_match_the_reference():
    unary = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    grid = random_grid()
    model = potts(unary, 0.7, 1.0)
    sites = model.sites(grid)
    assert sites.shape == (3, 6, 20) and sites.dtype == torch.uint8
    assert torch.equal(model.grid(sites), grid)
    want = population_energy(grid, unary, 0.7).flatten(1)
    torch.testing.assert_close(model.energy(sites), want)


def test_sweep_follows_the_conditional_field():
    # T -> 0: every site takes its most likely value given its neighbours.
    unary = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(2))
    grid = random_grid()
    model = potts(unary, 0.4, 1e-6)
    swept = model.grid(model.sweep(model.sites(grid), *gens()))
    colour0 = checkerboard(5, 4, 0)
    half = torch.where(colour0, (conditional_field(grid, unary, 0.4) < 0).float(), grid)
    want = torch.where(colour0, half, (conditional_field(half, unary, 0.4) < 0).float())
    assert torch.equal(swept, want)


def test_single_site_grid_samples_its_marginal():
    # 1x1 grid: one colour-0 site, no neighbours, P(m = 1) = sigmoid(−u/T).
    unary = torch.tensor([-0.3, 0.0, 0.8]).view(1, 3, 1, 1)
    model = potts(unary, 0.5, 0.7)
    masks = sample(model, 20000, 1, *gens(5))
    assert masks.shape == (20000, 3, 1)
    want = torch.sigmoid(-unary.flatten() / 0.7)
    assert (masks.float().mean(dim=0).flatten() - want).abs().max() < 0.015


def test_random_masks_are_fair_bits():
    masks = random_masks((50, 41, 10), torch.Generator().manual_seed(0))
    assert masks.shape == (50, 41, 10) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) == {0, 1}
    assert abs(masks.float().mean().item() - 0.5) < 0.01


def test_sample_is_seeded():
    model = potts(torch.randn(2, 2, 4, 4), 0.5, 1.0)
    assert torch.equal(sample(model, 3, 2, *gens(4)), sample(model, 3, 2, *gens(4)))
    assert sample(model, 3, 0, *gens()).shape == (3, 4, 16)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_triton_backend_matches_the_fast_path():
    # Interpreted Triton kernels (conftest sets TRITON_INTERPRET=1) on the grid layout.
    pytest.importorskip("triton")
    unary = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(3))
    model = potts(unary, 0.7, 1e-6)
    sites = model.sites(random_grid())
    fast = model.sweep(sites, *gens())
    with kernels.use_backend("triton"):
        torch.testing.assert_close(model.energy(sites), potts(unary, 0.7, 1.0).energy(sites))
        assert torch.equal(model.sweep(sites, *gens()), fast)  # T -> 0: deterministic


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


@pytest.mark.parametrize("mutation", ["flip", "gibbs"])
def test_refine_never_worse_than_best_initial(mutation):
    torch.manual_seed(0)
    unary = torch.randn(3, 4, 5, 5)
    masks = (torch.rand(8, 3, 4, 5, 5) < 0.5).float()
    before = population_energy(masks, unary, 0.5).min(dim=0).values
    out, fit = refine(masks, unary, 0.5, 0.5, 5, *gens(), mutation=mutation, mutation_rate=0.3)
    after = population_energy(out, unary, 0.5)
    torch.testing.assert_close(-fit, after, atol=1e-5, rtol=1e-5)
    assert (after.min(dim=0).values <= before + 1e-5).all()
    assert ((out == 0) | (out == 1)).all()


def test_refine_custom_fitness_and_bad_mutation():
    unary = torch.zeros(1, 1, 4, 4)
    masks = (torch.rand(6, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def kept(m):
        return m.sum(dim=(-2, -1))

    out, fit = refine(masks, unary, 0.0, 1.0, 10, *gens(), fitness=kept, mutation_rate=0.2)
    assert fit.max() >= kept(masks).max()
    torch.testing.assert_close(fit, kept(out))
    with pytest.raises(ValueError, match="mutation must be one of"):
        refine(masks, unary, 0.0, 1.0, 1, *gens(), mutation="swap")
