"""Fused Triton ERSM energy (run in the interpreter) against the PyTorch reference."""

import pytest
import torch

from energymask.kernels import reference as ref

from helpers import compiled_and_eager_layer

pytest.importorskip("triton")
ersm_triton = pytest.importorskip("energymask.kernels.ersm_triton")

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}
SHAPES = [  # (B, C, H, W, token_size)
    (2, 3, 1, 1, 1),
    (1, 4, 3, 5, 1),
    (2, 3, 7, 7, 1),
    (1, 2, 4, 6, 2),
    (2, 3, 6, 2, 2),
]


def inputs(shape, dtype, per_position, seed=0):
    bsz, c, hh, ww, p = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, c, hh, ww, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn(c * p * p, generator=gen).requires_grad_()
    if per_position:
        bias = torch.randn(hh // p, ww // p, generator=gen).requires_grad_()
    else:
        bias = torch.tensor(0.4).requires_grad_()
    return x, weight, bias


def run(fn, x, weight, bias, p, upstream):
    res = fn(x, weight, bias, p, 0.5, 0.8, 1.3)
    loss = sum((r.float() * g).sum() for r, g in zip(res, upstream, strict=True) if g is not None)
    grads = torch.autograd.grad(loss, (x, weight, bias), allow_unused=True)
    return res, tuple(
        g if g is not None else torch.zeros_like(t)
        for t, g in zip((x, weight, bias), grads, strict=True)
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_outputs_and_gradients_match_reference(shape, per_position, dtype):
    x, weight, bias = inputs(shape, dtype, per_position)
    want = ref.ersm_energy(x, weight, bias, shape[-1], 0.5, 0.8, 1.3)
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(r.shape, generator=gen) for r in want]
    want, want_grads = run(ref.ersm_energy, x, weight, bias, shape[-1], upstream)
    got, got_grads = run(ersm_triton.ersm_energy, x, weight, bias, shape[-1], upstream)
    tol = TOL[dtype]
    for name, g, e in zip(want._fields, got, want, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        torch.testing.assert_close(g, e, **tol, msg=name)
    for name, g, e in zip(("x", "weight", "bias"), got_grads, want_grads, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        torch.testing.assert_close(g.float(), e.float(), **tol, msg=f"grad {name}")


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_single_upstream_gradient(which):
    """Only one of (output, logits, keep, unary, pairwise) feeds the loss: the others are None."""
    x, weight, bias = inputs((2, 3, 4, 5, 1), torch.float64, True, seed=2)
    weight, bias = (
        weight.detach().double().requires_grad_(),
        bias.detach().double().requires_grad_(),
    )
    upstream = [None] * 5
    upstream[which] = 1.0
    got = run(ersm_triton.ersm_energy, x, weight, bias, 1, upstream)[1]
    want = run(ref.ersm_energy, x, weight, bias, 1, upstream)[1]
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, **TOL[torch.float64])


def test_zero_token_gradient_matches_reference():
    x, weight, bias = inputs((1, 3, 3, 3, 1), torch.float64, False, seed=3)
    with torch.no_grad():
        x[0, :, 1, 1] = 0.0
    weight, bias = (
        weight.detach().double().requires_grad_(),
        bias.detach().double().requires_grad_(),
    )
    upstream = [torch.ones(()) for _ in range(5)]
    got = run(ersm_triton.ersm_energy, x, weight, bias, 1, upstream)[1]
    want = run(ref.ersm_energy, x, weight, bias, 1, upstream)[1]
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, **TOL[torch.float64])


@pytest.mark.parametrize("per_position", [False, True])
def test_gradcheck_float64(per_position):
    x, weight, bias = inputs((1, 2, 3, 3, 1), torch.float64, per_position, seed=4)
    args = tuple(t.detach().double().requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *a: tuple(ersm_triton.ersm_energy(*a, 1, 0.5, 0.5, 1.0)), args, fast_mode=True
    )


def compare(shape, per_position, seed, dtype=torch.float32, layout=None):
    """Outputs and gradients of the Triton path against the reference.

    ``layout``: None (NCHW), "channels_last", or "strided" (a non-contiguous view).
    """
    x, weight, bias = inputs(shape, dtype, per_position, seed=seed)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    elif layout == "strided":
        wide = torch.cat([x.detach(), x.detach()], dim=3)
        x = wide[..., ::2].requires_grad_()  # every second column: a strided view
        assert not x.is_contiguous()
    want = ref.ersm_energy(x, weight, bias, shape[-1], 0.5, 0.8, 1.3)
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = [torch.randn(r.shape, generator=gen) for r in want]
    want, want_grads = run(ref.ersm_energy, x, weight, bias, shape[-1], upstream)
    got, got_grads = run(ersm_triton.ersm_energy, x, weight, bias, shape[-1], upstream)
    for g, e in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(g.float(), e.float(), **TOL[dtype])
    return got


LAYOUTS = [None, "channels_last"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tile", [(2, 8, 1), (4, 4, 2), (2, 4, 3)])
def test_token_tiles_channel_chunks_and_splits_match_reference(monkeypatch, tile, layout):
    """Several token tiles per map (halos across tile edges, a partial last tile),
    more channels than BLOCK_D (a partial last chunk), and the chunks split over programs."""
    monkeypatch.setattr(ersm_triton, "BLOCKS", ersm_triton.Tile(*tile))
    compare((2, 5, 5, 7, 1), True, seed=7, layout=layout)
    compare((1, 3, 4, 6, 2), False, seed=8, layout=layout)


@pytest.mark.parametrize("layout", [*LAYOUTS, "strided"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_cast_on_load_in_every_layout(monkeypatch, dtype, layout):
    monkeypatch.setattr(ersm_triton, "BLOCKS", ersm_triton.Tile(2, 4, 2))
    got = compare((2, 3, 3, 5, 1), True, seed=11, dtype=dtype, layout=layout)
    assert got.output.dtype == dtype


def test_channels_last_stays_channels_last_and_strided_input_is_copied():
    x = torch.randn(2, 4, 3, 5).to(memory_format=torch.channels_last)
    got = ersm_triton.ersm_energy(x, torch.randn(4), torch.tensor(0.1), 1, 1e-3, 1e-3, 1.0)
    assert got.output.is_contiguous(memory_format=torch.channels_last)
    assert ersm_triton.memory_format(x) == torch.channels_last
    assert ersm_triton.memory_format(x[..., ::2]) == torch.contiguous_format
    assert ersm_triton.memory_format(torch.randn(2, 1, 3, 3)) == torch.contiguous_format


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64_with_gpu_tiling(monkeypatch, layout):
    # 12 tokens in tiles of 8 (a partial one), 2 channels in chunks of 1 split over 2 programs
    monkeypatch.setattr(ersm_triton, "BLOCKS", ersm_triton.Tile(1, 8, 2))
    x, weight, bias = inputs((1, 2, 3, 4, 1), torch.float64, True, seed=9)
    x = x.detach().double()
    if layout:
        x = x.to(memory_format=torch.channels_last)
    args = tuple(t.detach().double().requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *a: tuple(ersm_triton.ersm_energy(*a, 1, 0.5, 0.5, 1.0)), args, fast_mode=True
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [64, 256, 2048])
@pytest.mark.parametrize("size", [7, 14, 56])
def test_gpu_tile_fills_an_h100_and_loads_along_the_contiguous_axis(channels, size, channels_last):
    hw = size * size
    tile = ersm_triton.gpu_tile(channels, hw, 64, channels_last)
    chunks = -(-channels // tile.block_d)
    programs = 64 * -(-hw // tile.block_s) * tile.n_split
    assert programs >= ersm_triton.TARGET_PROGRAMS or tile.n_split == chunks
    assert 1 <= tile.n_split <= chunks
    assert tile.block_d * tile.block_s <= ersm_triton.TILE_ELEMENTS
    contiguous = tile.block_d if channels_last else tile.block_s
    assert contiguous >= 32  # at least one 128-byte line of float32 per row when D, hw allow


def test_launch_covers_a_2100x2100_token_grid(monkeypatch):
    """More than 65,535 programs: all on grid axis 0 (2**31 - 1), none on axes 1, 2."""
    from energymask.kernels.launch import recording

    monkeypatch.setattr(ersm_triton, "GPU_TILING", True)
    x = torch.empty(1, 64, 2100, 2100, device="meta").to(memory_format=torch.channels_last)
    with recording() as launches:
        ersm_triton.forward(x, torch.empty(64, device="meta"), torch.empty((), device="meta"),
                            1e-3, 1e-3, 1.0)  # fmt: skip
    assert [len(item.grid) for item in launches] == [1, 1]
    assert max(item.grid[0] for item in launches) > 65_535


def test_softplus_is_exact_for_large_negative_arguments():
    """U = λ softplus(z) with z ≈ −30: e^z, not log(1 + e^z) rounded to 0."""
    x = torch.ones(1, 2, 2, 2)
    weight = torch.zeros(2)
    got = ersm_triton.ersm_energy(x, weight, torch.tensor(-30.0), 1, 1.0, 1.0, 1.0)
    torch.testing.assert_close(got.unary, torch.full((1, 2, 2), 9.357623e-14), rtol=1e-5, atol=0)


@pytest.mark.parametrize("per_position", [False, True])
def test_custom_ops_pass_opcheck(per_position):
    x, weight, bias = inputs((2, 3, 4, 5, 1), torch.float32, per_position)
    args = (x, weight, bias, 0.5, 0.8, 1.3)
    torch.library.opcheck(ersm_triton.ersm_token_energy, args)
    with torch.no_grad():
        out, z, keep, _, _, r, sim = ersm_triton.ersm_token_energy(*args)
    grads = [torch.randn_like(t) for t in (out, z, z, z, z)]
    backward_args = (x.detach(), weight.detach(), r, z, keep, sim, *grads,
                     0.5, 0.8, 1.3, per_position)  # fmt: skip
    torch.library.opcheck(ersm_triton.ersm_token_energy_backward, backward_args)


def test_compiles_without_graph_breaks():
    x, weight, bias = inputs((2, 3, 4, 6, 2), torch.float32, per_position=False)

    def loss(x, weight, bias):
        res = ersm_triton.ersm_energy(x, weight, bias, 2, 0.5, 0.8, 1.3)
        return res.output.sum() + (res.keep * (res.unary + res.pairwise)).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(x, weight, bias)
    got_grads = torch.autograd.grad(got, (x, weight, bias))
    want = loss(x, weight, bias)
    want_grads = torch.autograd.grad(want, (x, weight, bias))
    torch.testing.assert_close(got, want)
    for g, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_layer_on_triton_backend_compiles_without_graph_breaks():
    from energymask import EnergyMask2d

    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, check_finite=False)  # the check is data-dependent
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    (got, got_dx), (want, want_dx) = compiled_and_eager_layer(layer, x)  # want: reference
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(got_dx, want_dx, **TOL[torch.float32])


def test_failing_backward_kernel_falls_back_to_reference_gradients(monkeypatch):
    from energymask.kernels import dispatch

    def broken(*args):
        raise RuntimeError("ptxas fatal: unsupported gpu architecture (test)")

    monkeypatch.setattr(ersm_triton, "backward", broken)
    monkeypatch.setattr(dispatch, "_failed", {})
    monkeypatch.setenv(dispatch.STRICT_ENV, "0")
    x, weight, bias = inputs((1, 3, 4, 4, 1), torch.float32, True, seed=10)
    upstream = [torch.ones(()) for _ in range(5)]
    with pytest.warns(RuntimeWarning, match="'ersm_energy backward' failed .*ptxas fatal"):
        got = run(ersm_triton.ersm_energy, x, weight, bias, 1, upstream)[1]
    want = run(ref.ersm_energy, x, weight, bias, 1, upstream)[1]
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, **TOL[torch.float32])
    monkeypatch.setattr(dispatch, "_failed", {})
    monkeypatch.setenv(dispatch.STRICT_ENV, "1")
    with pytest.raises(RuntimeError, match="ptxas fatal"):
        run(ersm_triton.ersm_energy, x, weight, bias, 1, upstream)


def test_rejects_samples_beyond_int32_offsets():
    x = torch.empty(1, 2**16, 2**8, 2**7, device="meta")
    with pytest.raises(ValueError, match=r"x: one sample's token map must hold < 2\*\*31 values"):
        ersm_triton.forward(x, torch.empty(2**16, device="meta"), torch.empty((), device="meta"),
                            1e-3, 1e-3, 1.0)  # fmt: skip
