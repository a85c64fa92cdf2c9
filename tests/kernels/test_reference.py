"""PyTorch references of the energy kernels against naive loops and exact distributions."""

import pytest
import torch
import torch.nn.functional as F

from energymask.kernels import reference as ref

UNARY_3X3 = torch.tensor([[0.8, -0.5, 0.3], [-1.0, 0.2, 0.6], [0.4, -0.3, -0.7]])
UNARY_3X3 = UNARY_3X3.reshape(1, 1, 3, 3)


def naive_ersm(x, weight, bias, p, lam, gamma, temperature):
    """Token by token, neighbour by neighbour (docs/design.md §3)."""
    bsz, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    logits = torch.zeros(bsz, h, w, dtype=x.dtype)
    sim = torch.zeros(bsz, h, w, dtype=x.dtype)

    def token(b, i, j):
        t = x[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(-1)  # order (c, dy, dx)
        return t / (t.norm() + 1e-6)

    for b in range(bsz):
        for i in range(h):
            for j in range(w):
                ti = token(b, i, j)
                bij = bias if bias.dim() == 0 else bias[i, j]
                logits[b, i, j] = ti @ weight + bij
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if (di, dj) != (0, 0) and 0 <= i + di < h and 0 <= j + dj < w:
                            sim[b, i, j] += ti @ token(b, i + di, j + dj)
    keep = torch.sigmoid(-logits / temperature)
    keep_px = keep.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
    return x * keep_px, logits, keep, lam * F.softplus(logits), gamma * F.softplus(sim)


@pytest.mark.parametrize("shape,p", [((1, 3, 1, 1), 1), ((2, 3, 3, 5), 1), ((1, 2, 4, 6), 2)])
@pytest.mark.parametrize("per_position", [False, True])
def test_ersm_energy_matches_naive_loops(shape, p, per_position):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    weight = torch.randn(shape[1] * p * p, dtype=torch.float64)
    h, w = shape[2] // p, shape[3] // p
    bias = torch.randn(h, w, dtype=torch.float64) if per_position else torch.tensor(0.5).double()
    got = ref.ersm_energy(x, weight, bias, p, 0.3, 0.7, 1.5)
    want = naive_ersm(x, weight, bias, p, 0.3, 0.7, 1.5)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(ref.token_logits(x, weight, bias, p), want[1])  # inference path


def test_ersm_energy_half_input_gives_half_output_float_energies():
    x = torch.randn(1, 4, 3, 3).to(torch.bfloat16)
    res = ref.ersm_energy(x, torch.randn(4), torch.tensor(0.0), 1, 1e-3, 1e-3, 1.0)
    assert res.output.dtype == torch.bfloat16 and res.logits.dtype == torch.float32
    assert ref.token_logits(x, torch.randn(4), torch.tensor(0.0), 1).dtype == torch.float32


def test_ersm_energy_gradcheck_float64():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: tuple(ref.ersm_energy(*a, 1, 0.5, 0.5, 1.0)), (x, weight, bias)
    )


def brute_energy(m, u, beta):
    h, w = m.shape
    e = float((m * u).sum())
    for i in range(h):
        for j in range(w):
            if i + 1 < h:
                e += beta * float(m[i, j] != m[i + 1, j])
            if j + 1 < w:
                e += beta * float(m[i, j] != m[i, j + 1])
    return e


def test_population_energy_matches_brute_force():
    torch.manual_seed(2)
    masks = (torch.rand(3, 2, 2, 3, 4) < 0.5).float()
    unary = torch.randn(2, 2, 3, 4)
    got = ref.population_energy(masks, unary, 0.8)
    for k in range(3):
        for b in range(2):
            for c in range(2):
                want = brute_energy(masks[k, b, c], unary[b, c], 0.8)
                assert got[k, b, c].item() == pytest.approx(want, abs=1e-5)


def test_conditional_field_is_energy_difference():
    torch.manual_seed(3)
    masks = (torch.rand(2, 1, 1, 3, 5) < 0.5).float()
    unary = torch.randn(1, 1, 3, 5)
    field = ref.conditional_field(masks, unary, 0.6)
    for i in range(3):
        for j in range(5):
            on, off = masks.clone(), masks.clone()
            on[..., i, j], off[..., i, j] = 1.0, 0.0
            diff = ref.population_energy(on, unary, 0.6) - ref.population_energy(off, unary, 0.6)
            torch.testing.assert_close(field[..., i, j], diff)


def test_gibbs_sweep_seeded_and_touches_only_its_parity():
    torch.manual_seed(4)
    masks = (torch.rand(6, 2, 1, 5, 4) < 0.5).float()
    unary = torch.randn(2, 1, 5, 4)
    a = ref.gibbs_sweep(masks, unary, 0.5, 1.0, 1, seed=7)
    b = ref.gibbs_sweep(masks, unary, 0.5, 1.0, 1, seed=7)
    assert torch.equal(a, b)
    other = ~ref.checkerboard(5, 4, 1)
    assert torch.equal(a[..., other], masks[..., other])
    assert not torch.equal(a, masks)


def test_gibbs_sweep_samples_boltzmann(boltzmann_pvalue):
    unary = torch.tensor([[0.8, -0.5, 0.3], [-1.0, 0.2, 0.6], [0.4, -0.3, -0.7]]).reshape(
        1, 1, 3, 3
    )
    pvalue = boltzmann_pvalue(ref.gibbs_sweep, unary, 0.5, 1.0, chains=20000, sweeps=10, seed=0)
    assert pvalue > 1e-3


def test_boltzmann_check_detects_wrong_temperature(boltzmann_pvalue):
    unary = torch.tensor([[0.8, -0.5, 0.3], [-1.0, 0.2, 0.6], [0.4, -0.3, -0.7]]).reshape(
        1, 1, 3, 3
    )
    pvalue = boltzmann_pvalue(
        ref.gibbs_sweep, unary, 0.5, 1.0, chains=20000, sweeps=10, seed=0, exact_temperature=1.5
    )
    assert pvalue < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_norm_matches_vector_norm_with_zero_gradient_at_zero(dtype):
    tokens = torch.randn(2, 5, 3, 4, dtype=dtype)
    tokens[1, :, 2, 3] = 0.0
    tokens.requires_grad_()
    got = ref.token_norm(tokens)
    torch.testing.assert_close(got, torch.linalg.vector_norm(tokens, dim=1, keepdim=True))
    assert got[1, 0, 2, 3] <= torch.finfo(dtype).tiny ** 0.5  # negligible beside EPS
    (grad,) = torch.autograd.grad(got.sum(), tokens)
    assert torch.isfinite(grad).all()
    assert (grad[1, :, 2, 3] == 0).all()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_gibbs_sweep_keeps_the_mask_dtype(dtype):
    gen = torch.Generator().manual_seed(4)
    masks = (torch.rand(3, 1, 2, 4, 4, generator=gen) < 0.5).to(dtype)
    unary = torch.randn(1, 2, 4, 4, generator=gen)
    out = ref.gibbs_sweep(masks, unary, 0.5, 1.0, 0, seed=2)
    assert out.dtype == dtype
    assert torch.equal(out.float(), ref.gibbs_sweep(masks.float(), unary, 0.5, 1.0, 0, seed=2))
