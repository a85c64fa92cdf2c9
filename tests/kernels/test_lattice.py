"""Mask layouts and the site-layout Potts sweep (energymask.kernels.lattice) vs the reference."""

import pytest
import torch

from energymask.kernels import checkerboard
from energymask.kernels import reference as ref
from energymask.kernels.lattice import (
    draw_seed,
    lattice,
    neighbour_sum,
    site_energy,
    site_sweep,
    to_grid,
    to_sites,
)


def setup(h=5, w=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = (torch.rand(3, 2, 3, h, w, generator=gen) < 0.5).to(torch.uint8)
    unary = torch.randn(2, 3, h, w, generator=gen)
    return grid, unary


def field(unary, lat, beta):
    return unary.flatten(-2).flatten(0, 1).index_select(-1, lat.order) + beta * lat.degree


@pytest.mark.parametrize("grid_order", [False, True])
def test_layouts_round_trip(grid_order):
    grid, _ = setup()
    lat = lattice(5, 4, grid_order=grid_order)
    sites = to_sites(grid, lat)
    assert sites.shape == (3, 6, 20) and sites.dtype == torch.uint8
    assert torch.equal(to_grid(sites, lat, (2, 3)), grid)
    if grid_order:
        assert torch.equal(sites, grid.flatten(-2).flatten(1, 2))  # a view, no reordering


def test_degree_counts_in_grid_neighbours():
    lat = lattice(3, 4, grid_order=True)
    assert lat.degree.view(3, 4).tolist() == [[2, 3, 3, 2], [3, 4, 4, 3], [2, 3, 3, 2]]
    assert lat.neighbours.shape == (0, 4) and lat.split == 0


def test_site_energy_matches_reference():
    grid, unary = setup(seed=1)
    lat = lattice(5, 4)
    got = site_energy(to_sites(grid, lat), lat, field(unary, lat, 0.7), 0.7)
    torch.testing.assert_close(got, ref.population_energy(grid, unary, 0.7).flatten(1))


def test_site_sweep_at_zero_temperature_matches_reference():
    grid, unary = setup(seed=2)
    lat = lattice(5, 4)
    swept = site_sweep(to_sites(grid, lat), lat, field(unary, lat, 0.4), 0.4, 1e-6,
                       torch.Generator().manual_seed(0), 1)  # fmt: skip
    want = ref.gibbs_sweep(ref.gibbs_sweep(grid, unary, 0.4, 1e-6, 0, 0), unary, 0.4, 1e-6, 1, 0)
    assert swept.dtype == torch.uint8
    assert torch.equal(to_grid(swept, lat, (2, 3)), want)


def test_seeds():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert draw_seed(a) == draw_seed(b) and 0 <= draw_seed(a) < 2**62


def test_lattice_orders_colours_and_links_neighbours():
    lat = lattice(3, 4)
    assert lat.split == 6 and lat.order.shape == (12,) and not lat.grid_order
    assert checkerboard(3, 4, 0).flatten()[lat.order[:6]].all()
    assert torch.equal(lat.order[lat.inverse], torch.arange(12))
    assert torch.equal(lat.rows * 4 + lat.cols, lat.order)
    corner = int(lat.inverse[0])  # grid (0, 0): colour 0, neighbours (0, 1) and (1, 0)
    table = lat.neighbours[corner]  # up, down, left, right in colour 1's block; 6 = off grid
    assert table.tolist()[0] == 6 and table.tolist()[2] == 6
    assert sorted(lat.order[lat.split + table[[1, 3]]].tolist()) == [1, 4]
    assert torch.equal((lat.neighbours < 6).sum(1).float(), lat.degree)  # both blocks hold 6


def test_neighbour_table_matches_dense_adjacency():
    """Every N4 edge and no other, on an odd grid: the table vs |Δrow| + |Δcol| == 1."""
    lat = lattice(5, 7)
    n0 = lat.split
    r0, c0, r1, c1 = lat.rows[:n0], lat.cols[:n0], lat.rows[n0:], lat.cols[n0:]
    dense = ((r1[:, None] - r0).abs() + (c1[:, None] - c0).abs() == 1).float()  # (n1, n0)
    ones1 = torch.eye(35 - n0)  # colour 1 one-hot: neighbour sums = columns of dense
    assert torch.equal(neighbour_sum(ones1, lat.neighbours[:n0]), dense)
    assert torch.equal(neighbour_sum(torch.eye(n0), lat.neighbours[n0:]), dense.T)


def test_lattice_memory_is_linear_in_the_sites():
    """Every tensor of a 256×256 lattice is O(n): at most 4 int64 per site."""
    for grid_order in (False, True):
        lat = lattice(256, 256, grid_order=grid_order)
        for value in lat:
            if isinstance(value, torch.Tensor):
                assert value.numel() <= 4 * 256 * 256


def test_grid_order_lattice_is_the_identity_layout():
    lat = lattice(3, 4, grid_order=True)
    assert lat.grid_order and torch.equal(lat.order, torch.arange(12))
    assert torch.equal(lat.degree, lattice(3, 4).degree[lattice(3, 4).inverse])
