"""Triton Potts energy and checkerboard Gibbs sweep (interpreter) against the reference."""

import pytest
import torch

from energymask.kernels import reference as ref

pytest.importorskip("triton")
potts = pytest.importorskip("energymask.kernels.potts_triton")

UNARY_3X3 = torch.tensor([[0.8, -0.5, 0.3], [-1.0, 0.2, 0.6], [0.4, -0.3, -0.7]]).reshape(
    1, 1, 3, 3
)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1, 1), (3, 2, 2, 3, 5), (8, 1, 3, 7, 7), (2, 2, 1, 4, 9)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_population_energy_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(shape, generator=gen) < 0.5).to(dtype)
    unary = torch.randn(shape[1:], generator=gen).to(dtype)
    got = potts.population_energy(masks, unary, 0.7)
    want = ref.population_energy(masks, unary, 0.7)
    assert got.dtype == torch.float32 and got.shape == shape[:3]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_population_energy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"masks must be \(K, B, C, h, w\)"):
        potts.population_energy(torch.zeros(2, 1, 1, 3, 3), torch.zeros(1, 1, 3, 4), 0.5)


@pytest.mark.parametrize("parity", [0, 1])
def test_gibbs_sweep_seeded_and_touches_only_its_parity(parity):
    gen = torch.Generator().manual_seed(1)
    masks = (torch.rand(5, 2, 2, 4, 7, generator=gen) < 0.5).float()
    unary = torch.randn(2, 2, 4, 7, generator=gen)
    a = potts.gibbs_sweep(masks, unary, 0.5, 1.0, parity, seed=3)
    b = potts.gibbs_sweep(masks, unary, 0.5, 1.0, parity, seed=3)
    c = potts.gibbs_sweep(masks, unary, 0.5, 1.0, parity, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    other = ~ref.checkerboard(4, 7, parity)
    assert torch.equal(a[..., other], masks[..., other])
    assert not torch.equal(a[..., ~other], masks[..., ~other])


def test_gibbs_sweep_follows_the_conditional_at_the_extremes():
    """A huge negative field always keeps, a huge positive one always drops."""
    masks = torch.zeros(4, 1, 2, 3, 3)
    unary = torch.full((1, 2, 3, 3), -50.0)
    unary[:, 1] = 50.0
    out = potts.gibbs_sweep(masks, unary, 0.0, 1.0, 0, seed=0)
    site = ref.checkerboard(3, 3, 0)
    assert torch.equal(out[:, :, 0][..., site], torch.ones_like(out[:, :, 0][..., site]))
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))


def test_gibbs_sweep_samples_boltzmann(boltzmann_pvalue):
    pvalue = boltzmann_pvalue(
        potts.gibbs_sweep, UNARY_3X3, 0.5, 1.0, chains=20000, sweeps=10, seed=0
    )
    assert pvalue > 1e-3


def test_custom_ops_pass_opcheck_and_compile_without_graph_breaks():
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 2, 2, 4, 5, generator=gen) < 0.5).float()
    unary = torch.randn(2, 2, 4, 5, generator=gen)
    torch.library.opcheck(potts._population_energy_op, (masks, unary, 0.3))
    torch.library.opcheck(potts._gibbs_sweep_op, (masks, unary, 0.3, 0.7, 1, 11))

    def step(masks, unary):
        swept = potts.gibbs_sweep(potts.gibbs_sweep(masks, unary, 0.3, 0.7, 0, 5),
                                  unary, 0.3, 0.7, 1, 6)
        return swept, potts.population_energy(swept, unary, 0.3)

    got = torch.compile(step, fullgraph=True, backend="aot_eager")(masks, unary)
    want = step(masks, unary)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize(
    "tile, shape",
    [((2, 8), (3, 2, 2, 5, 7)), ((1, 4), (2, 1, 3, 3, 5)), (None, (1, 1, 3, 40, 40))],
)
def test_gpu_tiling_matches_reference(monkeypatch, tile, shape):
    """Several programs over the planes and over each plane's sites, partial last ones.

    ``None``: the tile a GPU picks for a 40x40 grid (chunks of 1024 sites).
    """
    if tile is None:
        monkeypatch.setattr(potts, "GPU_TILING", True)
        assert potts.gpu_tile(3, 1600) == potts.Tile(1, 1024)
    else:
        monkeypatch.setattr(potts, "BLOCKS", potts.Tile(*tile))
    gen = torch.Generator().manual_seed(7)
    masks = (torch.rand(shape, generator=gen) < 0.5).to(torch.uint8)
    unary = torch.randn(shape[1:], generator=gen)
    torch.testing.assert_close(
        potts.population_energy(masks, unary, 0.6),
        ref.population_energy(masks, unary, 0.6),
        rtol=1e-5, atol=1e-4,
    )  # fmt: skip
    # T -> 0: the sweep is deterministic, so it must equal the reference exactly
    for parity in (0, 1):
        got = potts.gibbs_sweep(masks, unary, 0.6, 1e-6, parity, seed=3)
        assert got.dtype == torch.uint8
        assert torch.equal(got, ref.gibbs_sweep(masks, unary, 0.6, 1e-6, parity, seed=3))


def test_uint8_masks_stay_uint8_and_match_float_masks():
    gen = torch.Generator().manual_seed(2)
    masks = (torch.rand(4, 2, 2, 3, 5, generator=gen) < 0.5).to(torch.uint8)
    unary = torch.randn(2, 2, 3, 5, generator=gen)
    swept = potts.gibbs_sweep(masks, unary, 0.5, 1.0, 1, seed=9)
    assert swept.dtype == torch.uint8
    assert torch.equal(swept.float(), potts.gibbs_sweep(masks.float(), unary, 0.5, 1.0, 1, seed=9))
    want = potts.population_energy(masks.float(), unary, 0.5)
    torch.testing.assert_close(potts.population_energy(masks, unary, 0.5), want)


@pytest.mark.parametrize("size", [4, 16, 128])
@pytest.mark.parametrize("population", [1, 32])
def test_gpu_tile_bounds_the_work_per_program(size, population):
    tile = potts.gpu_tile(population * 8 * 64, size * size)
    assert tile.block_p * tile.block <= potts.TILE_SITES
    assert tile.block <= 1024  # 128x128 grids in chunks: no spills (test_kernels_compile.py)
