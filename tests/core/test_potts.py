"""Potts model and Gibbs sampler of PB-EDropout (energymask.potts) against the reference."""

import pytest
import torch

import energymask.kernels as kernels
from energymask.kernels import checkerboard, population_energy
from energymask.kernels.reference import conditional_field
from energymask.potts import potts, random_masks, sample


def gens(seed: int = 0) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def random_grid(k=3, b=2, c=3, h=5, w=4, seed=0):
    return (torch.rand(k, b, c, h, w, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_site_layout_round_trip_and_energy_match_the_reference(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    unary = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    grid = random_grid()
    with kernels.use_backend(backend):
        model = potts(unary, 0.7, 1.0)
    assert model.lattice.grid_order == (backend == "triton")  # layout chosen once, here
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


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_triton_layout_sweeps_like_the_site_layout():
    # Interpreted Triton kernels (conftest sets TRITON_INTERPRET=1) on the grid layout.
    pytest.importorskip("triton")
    unary = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(3))
    model = potts(unary, 0.7, 1e-6)
    grid = random_grid()
    fast = model.grid(model.sweep(model.sites(grid), *gens()))
    with kernels.use_backend("triton"):
        fused = potts(unary, 0.7, 1e-6)
    swept = fused.sweep(fused.sites(grid), *gens())
    assert swept.dtype == torch.uint8
    assert torch.equal(fused.grid(swept), fast)  # T -> 0: deterministic


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
