import itertools

import pytest
import torch
from scipy import stats

from energymask.kernels import draw_seed, population_energy
from energymask.pbedropout import (
    PBEDropout2d,
    PBEDropoutSettings,
    apply_patch_mask,
    grid_shape,
    initial_offset,
    lowest_keep_mask,
    patch_unary,
    pb_edropout_2d,
    row_quantile,
)
from energymask.potts import potts, sample


def make_input(b=4, c=3, h=16, w=16, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_p_zero_is_identity():
    x = make_input()
    layer = PBEDropout2d(3, p=0.0, seed=0).train()
    assert layer(x) is x
    assert pb_edropout_2d(x, p=0.0).output is x


@pytest.mark.parametrize("n", [1, 2, 7, 64])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.93])
def test_row_quantile_matches_torch_quantile(n, q):
    values = torch.randn(5, 3, n, generator=torch.Generator().manual_seed(n))
    want = torch.quantile(values, q, dim=-1, keepdim=True)
    torch.testing.assert_close(row_quantile(values, q), want)


def test_unary_has_fraction_p_positive():
    x = make_input(8, 4, 32, 32)
    u = patch_unary(x, 4, 0.25)
    assert u.shape == (8, 4, 8, 8) and u.dtype == torch.float32
    frac = (u > 0).float().mean().item()
    assert abs(frac - 0.25) < 0.03


def relu_inputs(steps, b=8, c=8, size=32):
    """A fixed sequence of non-negative feature maps, one per training step."""
    return [torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(i)).relu()
            for i in range(steps)]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_uncalibrated_threshold_drops_less_than_p(p):
    # Why the calibration exists: with δ = 0 the coupling pulls the masks to "keep".
    gen = torch.Generator().manual_seed(0)
    out = pb_edropout_2d(relu_inputs(1)[0], p=p, beta=0.5, generator=gen)
    assert 1.0 - out.mask.mean().item() < p - 0.02


# The offset starts at the δ found on the first batch (initial_offset), so the rate is p from
# step 1: per-step and block numbers in docs/design.md §4 (results_pbedropout_calibration.py).
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_realised_drop_rate_is_p_from_the_first_step(p, beta):
    layer = PBEDropout2d(8, p=p, beta=beta, seed=0).train()
    rates = []
    for x in relu_inputs(80, b=2):
        layer(x)
        rates.append(layer.last_drop_rate)
    assert abs(rates[0] - p) <= 0.01  # step 1
    assert abs(sum(rates) / 80 - p) <= 0.01  # steps 1..80
    assert abs(sum(rates[40:]) / 40 - p) <= 0.01  # steps 41..80
    if p < 0.5:
        assert layer.threshold_offset.item() > 0  # the coupling needed a higher threshold


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_initial_offset_finds_p_on_the_batch_and_draws_one_seed(p):
    x = relu_inputs(1, b=2)[0]
    settings = PBEDropoutSettings(p=p, beta=0.5)
    gen = torch.Generator().manual_seed(3)
    offset, out = initial_offset(x, settings, generator=gen)
    assert abs(float(1 - out.mask.mean()) - p) <= 0.01
    again = pb_edropout_2d(x, settings, offset=offset, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.mask, out.mask)  # the returned step is a real step at that δ
    one_draw = torch.Generator().manual_seed(3)
    draw_seed(one_draw)
    assert torch.equal(gen.get_state(), one_draw.get_state())  # as after one ordinary step


def test_initial_offset_runs_once_and_is_checkpointed():
    layer = PBEDropout2d(8, p=0.2, beta=0.5, seed=0).train()
    assert not layer.offset_initialised
    layer(relu_inputs(1, b=2)[0])
    assert layer.offset_initialised and layer.threshold_offset.item() > 0
    fresh = PBEDropout2d(8, p=0.2, beta=0.5, seed=0)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.offset_initialised  # a resumed run does not search again
    state = layer.state_dict()
    state["_extra_state"].pop("offset_initialised")  # saved before issue 24
    fresh = PBEDropout2d(8, p=0.2, beta=0.5, seed=0)
    fresh.load_state_dict(state)
    assert fresh.offset_initialised  # its δ came from the controller: keep it
    del state["_extra_state"]
    fresh = PBEDropout2d(8, p=0.2, beta=0.5, seed=0)
    fresh.load_state_dict(state, strict=False)
    assert fresh.offset_initialised  # a loaded δ is kept
    untrained = PBEDropout2d(8, p=0.2, beta=0.5, seed=0)
    fresh.load_state_dict(untrained.state_dict())
    assert not fresh.offset_initialised  # saved before any training step: search then
    off = PBEDropout2d(8, p=0.2, beta=0.5, seed=0, calibration_rate=0.0).train()
    off(relu_inputs(1, b=2)[0])
    assert not off.offset_initialised and off.threshold_offset.item() == 0.0


def test_calibration_offset_is_checkpointed():
    layer = PBEDropout2d(8, p=0.2, beta=0.5, seed=0).train()
    for x in relu_inputs(5):
        layer(x)
    fresh = PBEDropout2d(8, p=0.2, beta=0.5, seed=1)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.threshold_offset.item() == layer.threshold_offset.item() != 0
    off = PBEDropout2d(8, p=0.2, beta=0.5, seed=0, calibration_rate=0.0).train()
    off(relu_inputs(1)[0])
    assert off.threshold_offset.item() == 0.0


def test_one_patch_grid_follows_p():
    # A one-patch plane has â = 0, so u = δ: the calibration alone sets the rate.
    layer = PBEDropout2d(16, p=0.3, patch_size=8, seed=0).train()
    rates = []
    for x in relu_inputs(80, b=16, c=16, size=8):
        layer(x)
        rates.append(layer.last_drop_rate)
    assert abs(sum(rates[40:]) / 40 - 0.3) <= 0.01


def test_nan_planes_follow_p():
    # NaN activities count as 0: such a plane is uniform (u = δ), like a dead ReLU channel.
    layer = PBEDropout2d(8, p=0.2, seed=0).train()
    rates = []
    for x in relu_inputs(80, b=2):
        x[:, :2] = float("nan")
        x[0, 2, :5] = float("inf")
        y = layer(x)
        rates.append(layer.last_drop_rate)
    assert y[:, 3:].isfinite().all()
    assert abs(sum(rates[40:]) / 40 - 0.2) <= 0.01


def test_sampler_matches_exact_gibbs_distribution():
    beta, temperature = 0.4, 1.0
    u = torch.tensor([[0.3, -0.2, 0.5], [-0.4, 0.1, 0.0], [0.2, -0.6, 0.4]])
    unary = u.expand(200, 100, 3, 3).contiguous()
    model = potts(unary, beta, temperature)
    generators = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    masks = model.grid(sample(model, 1, 25, *generators))[0].reshape(-1, 9)
    codes = (masks * (2 ** torch.arange(9))).sum(-1).long()
    observed = torch.bincount(codes, minlength=512).double()
    configs = torch.tensor(list(itertools.product([0, 1], repeat=9)), dtype=torch.float32)
    configs = configs.flip(-1)  # bit i of the code = site i
    energy = population_energy(configs.view(512, 1, 1, 3, 3), u.view(1, 1, 3, 3), beta).view(512)
    prob = torch.softmax(-energy.double() / temperature, 0)
    expected = prob * observed.sum()
    big = expected >= 5  # pool the rare configurations into one bin
    obs = torch.cat([observed[big], observed[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    result = stats.chisquare(obs.numpy(), exp.numpy())
    assert result.pvalue > 1e-3


@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("grid", [(8, 8), (3, 5), (1, 1)])
def test_lowest_keep_mask_drops_round_p_hw_lowest(p, grid):
    keep = torch.rand(6, *grid, generator=torch.Generator().manual_seed(0))
    mask = lowest_keep_mask(keep, p)
    n = grid[0] * grid[1]
    count = int(p * n + 0.5)
    assert ((1 - mask).flatten(1).sum(1) == count).all()
    for channel in range(6):  # every dropped patch is below every kept one
        dropped, kept = keep[channel][mask[channel] == 0], keep[channel][mask[channel] == 1]
        if len(dropped) and len(kept):
            assert dropped.max() <= kept.min()


def test_lowest_keep_mask_breaks_ties_by_position():
    keep = torch.tensor([[[0.9, 0.5, 0.5], [0.5, 0.2, 0.5]]])
    want = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]])  # 0.2, then the first two 0.5
    assert torch.equal(lowest_keep_mask(keep, 0.5), want)


def trained_layer(p=0.3, steps=5, **kwargs):
    layer = PBEDropout2d(3, p=p, seed=0, **kwargs).train()
    for seed in range(steps):
        layer(make_input(seed=seed))
    return layer


def test_eval_uses_deterministic_masks():
    layer = trained_layer(p=0.3, ema_decay=0.5)
    x = make_input()
    layer.eval()
    y1, y2 = layer(x), layer(x)
    assert torch.equal(y1, y2)
    mask = lowest_keep_mask(layer.ema_mask, 0.3)
    assert (1 - mask).flatten(1).sum(1).tolist() == [5, 5, 5]  # round(0.3 · 16)
    assert torch.equal(y1, apply_patch_mask(x, mask.unsqueeze(0), 4))
    assert torch.equal(layer.deterministic_mask(), mask.unsqueeze(0))  # the EMA mask's grid
    assert torch.equal(layer.deterministic_mask(tuple(mask.shape[1:])), mask.unsqueeze(0))
    with pytest.raises(ValueError, match=r"patch grid of x must be \(4, 4\) \(the EMA mask\), "
                                         r"but got \(2, 2\)"):
        layer.deterministic_mask((2, 2))
    assert PBEDropout2d(3, p=0.3).deterministic_mask() is None  # nothing learnt yet


def test_eval_identity_without_deterministic_inference():
    layer = trained_layer(deterministic_inference=False).eval()
    x = make_input()
    assert layer(x) is x


def test_eval_before_training_is_identity():
    layer = PBEDropout2d(3, p=0.5).eval()
    x = make_input()
    assert torch.equal(layer(x), x)


def test_ema_update_formula():
    layer = PBEDropout2d(3, p=0.5, seed=0, ema_decay=0.8).train()
    layer(make_input())
    first = layer.last_mask.mean(dim=0)
    assert torch.allclose(layer.ema_mask, 0.8 + 0.2 * first)
    before = layer.ema_mask.clone()
    layer(make_input(seed=2))
    assert torch.allclose(layer.ema_mask, 0.8 * before + 0.2 * layer.last_mask.mean(dim=0))


@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_frozen_training_drops_p_without_sampling(p):
    layer = PBEDropout2d(4, p=p, seed=0, ema_decay=0.5).train()
    for x in relu_inputs(3, b=4, c=4):
        layer(x)
    layer.freeze()
    assert layer.frozen
    ema, offset = layer.ema_mask.clone(), layer.threshold_offset.clone()
    state = layer.generator.get_state()
    x = relu_inputs(4, b=4, c=4)[-1]
    y = layer(x)
    assert torch.equal(layer.ema_mask, ema) and torch.equal(layer.threshold_offset, offset)
    assert torch.equal(layer.generator.get_state(), state)
    mask = lowest_keep_mask(ema, p).unsqueeze(0)
    assert torch.equal(y, apply_patch_mask(x, mask, 4))
    assert layer.last_drop_rate == pytest.approx(int(p * 64 + 0.5) / 64)
    assert abs(layer.last_drop_rate - p) <= 0.01 and layer.last_energy is None
    layer.unfreeze()
    layer(x)
    assert not torch.equal(layer.ema_mask, ema)


def test_state_dict_round_trip_lazy_buffer_and_generator():
    layer = PBEDropout2d(3, p=0.5, seed=0).train()
    layer(make_input())
    state = layer.state_dict()
    fresh = PBEDropout2d(3, p=0.5, seed=123)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ema_mask, layer.ema_mask)
    x = make_input(seed=5)
    assert torch.equal(fresh.train()(x), layer(x))  # resumed run continues exactly


def test_state_dict_without_offset_loads_with_zero_offset():
    layer = trained_layer()
    state = layer.state_dict()
    del state["threshold_offset"]  # a checkpoint from before the calibration
    fresh = PBEDropout2d(3, p=0.3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ema_mask, layer.ema_mask) and fresh.threshold_offset.item() == 0.0


def test_grid_size_allocates_buffer():
    layer = PBEDropout2d(3, grid_size=(4, 4))
    assert layer.ema_mask.shape == (3, 4, 4) and (layer.ema_mask == 1).all()


def test_seeded_runs_reproducible():
    x = make_input()
    a = PBEDropout2d(3, p=0.3, seed=7).train()
    b = PBEDropout2d(3, p=0.3, seed=7).train()
    assert torch.equal(a(x), b(x))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = pb_edropout_2d(x, p=0.3, generator=g1).mask
    assert torch.equal(first, pb_edropout_2d(x, PBEDropoutSettings(p=0.3), generator=g2).mask)


def test_batch_one_and_odd_sizes_with_partial_patches():
    x = make_input(1, 2, 13, 7)
    assert grid_shape(13, 7, 4) == (4, 2)
    layer = PBEDropout2d(2, p=0.4, patch_size=4, seed=0, mutation="gibbs").train()
    y = layer(x)
    assert y.shape == x.shape
    assert layer.ema_mask.shape == (2, 4, 2)
    kept = layer.last_mask.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :13, :7]
    frac = kept.mean(dim=(-2, -1), keepdim=True)
    expected = torch.where(frac > 0, x * kept / frac.clamp_min(1e-6), torch.zeros_like(x))
    assert torch.allclose(y, expected, atol=1e-6)


def test_gradient_flows_through_kept_patches():
    x = make_input().requires_grad_()
    layer = PBEDropout2d(3, p=0.5, seed=0, rescale=False).train()
    layer(x).sum().backward()
    kept = layer.last_mask.repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.equal(x.grad, kept)


def test_bf16_autocast():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    layer = PBEDropout2d(3, p=0.3, seed=0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(make_input())
        y = layer(h)
    assert y.dtype == h.dtype == torch.bfloat16
    assert layer.last_mask.dtype == torch.float32
    assert torch.isfinite(y.float()).all()


def test_custom_fitness_is_used():
    x = make_input()

    def keep_all(m):
        return m.sum(dim=(-2, -1))

    out = pb_edropout_2d(x, p=0.5, population=8, generations=3, fitness=keep_all,
                         generator=torch.Generator().manual_seed(0))
    default = pb_edropout_2d(x, p=0.5, population=8, generations=3,
                             generator=torch.Generator().manual_seed(0))
    assert out.mask.mean() > default.mask.mean()


@pytest.mark.parametrize("fitness", [None, lambda m: m.sum(dim=(-2, -1))])
def test_output_energy_is_energy_of_applied_mask(fitness):
    x = make_input()
    out = pb_edropout_2d(x, p=0.4, offset=0.3, fitness=fitness,
                         generator=torch.Generator().manual_seed(0))
    unary = patch_unary(x, 4, 0.4, 0.3)
    want = population_energy(out.mask.unsqueeze(0), unary, 0.1)[0]
    torch.testing.assert_close(out.energy, want, atol=1e-5, rtol=1e-5)


def test_stats_and_repr():
    layer = PBEDropout2d(3, p=0.5, seed=0).train()
    layer(make_input())
    assert isinstance(layer.last_drop_rate, float) and isinstance(layer.last_energy, float)
    assert "p=0.5" in repr(layer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.0}, "p must be in"),
        ({"p": -0.1}, "p must be in"),
        ({"patch_size": 0}, "patch_size must be"),
        ({"population": 0}, "population must be"),
        ({"generations": -1}, "generations must be"),
        ({"elite_fraction": 0.0}, "elite_fraction must be"),
        ({"elite_fraction": 1.0}, "elite_fraction must be"),
        ({"temperature": 0.0}, "temperature must be"),
        ({"beta": -1.0}, "beta must be"),
        ({"sweeps": -1}, "sweeps must be"),
        ({"tournament_size": 0}, "tournament_size must be"),
        ({"mutation_rate": 2.0}, "mutation_rate must be"),
        ({"mutation": "swap"}, "mutation must be one of"),
        ({"ema_decay": 1.5}, "ema_decay must be"),
        ({"channels": 0}, "channels must be"),
    ],
)
def test_bad_settings(kwargs, match):
    settings = {"channels": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        PBEDropout2d(**settings)


def test_bad_inputs():
    layer = PBEDropout2d(3, p=0.5)
    with pytest.raises(ValueError, match="x must be 4D"):
        layer(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="x must have 3 channels, but got 4"):
        layer(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="x must be 4D"):
        pb_edropout_2d(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="p must be in"):
        pb_edropout_2d(torch.zeros(1, 1, 8, 8), p=1.0)
    layer.train()(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="patch grid of x must be"):
        layer(torch.zeros(1, 3, 16, 16))


FLOATS = ("p", "beta", "temperature", "elite_fraction", "mutation_rate", "ema_decay",
          "calibration_rate")
INTS = ("patch_size", "population", "generations", "sweeps", "tournament_size")


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_float_settings_must_be_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be finite, but got -?(nan|inf)"):
        PBEDropoutSettings(**{name: value})


@pytest.mark.parametrize("name", FLOATS)
def test_float_settings_must_be_numbers(name):
    with pytest.raises(TypeError, match=f"{name} must be a float .*, but got '0.1' \\(str\\)"):
        PBEDropoutSettings(**{name: "0.1"})


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("value", [2.0, True, "2"])
def test_int_settings_must_be_ints(name, value):
    with pytest.raises(TypeError, match=f"{name} must be an int >= [01], but got"):
        PBEDropoutSettings(**{name: value})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: PBEDropoutSettings(rescale=1), TypeError, "rescale must be a bool, but got 1"),
        (lambda: PBEDropoutSettings(deterministic_inference="yes"), TypeError,
         "deterministic_inference must be a bool"),
        (lambda: PBEDropout2d(3, 0.5), TypeError,
         "settings must be a PBEDropoutSettings or None, but got float"),
        (lambda: PBEDropout2d(3, drop=0.5), TypeError,
         r"unknown PB-EDropout setting\(s\) \['drop'\]; the settings are"),
        (lambda: PBEDropout2d(3.0), TypeError, "channels must be an int >= 1, but got 3.0"),
        (lambda: PBEDropout2d(3, seed=-1), ValueError, "seed must be an int >= 0, but got -1"),
        (lambda: PBEDropout2d(3, grid_size=(4,)), ValueError,
         r"grid_size must be None or \(h, w\), but got \(4,\)"),
        (lambda: PBEDropout2d(3, grid_size=(4, 0)), ValueError,
         "grid_size must be an int >= 1, but got 0"),
    ],
)
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_numpy_scalars_become_python_numbers():
    np = pytest.importorskip("numpy")
    settings = PBEDropoutSettings(p=np.float32(0.25), population=np.int64(4))
    assert type(settings.p) is float and type(settings.population) is int
    assert settings.p == 0.25 and settings.population == 4


def test_settings_object_and_fields():
    settings = PBEDropoutSettings(p=0.3, beta=0.5)
    layer = PBEDropout2d(3, settings, temperature=0.2)
    assert layer.settings == PBEDropoutSettings(p=0.3, beta=0.5, temperature=0.2)
    assert layer.p == 0.3 and settings.temperature == 0.1  # frozen: replaced, not changed
    with pytest.raises(AttributeError):
        settings.p = 0.5


def test_bad_input_types():
    layer = PBEDropout2d(3, p=0.5)
    with pytest.raises(TypeError, match="x must be a floating point tensor, but got torch.int64"):
        layer(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a Tensor"):
        pb_edropout_2d([[1.0]])


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)])
def test_zero_size_input_gives_empty_result(shape):
    x = torch.zeros(shape)
    out = pb_edropout_2d(x, p=0.3)
    h, w = grid_shape(shape[2], shape[3], 4)
    assert out.output.shape == shape and out.mask.shape == (shape[0], 3, h, w)
    assert out.energy.shape == (shape[0], 3)
    layer = PBEDropout2d(3, p=0.3, seed=0).train()
    assert layer(x).shape == shape
    assert layer.ema_mask.numel() == 0 and layer.last_drop_rate is None  # no state change
    assert layer.threshold_offset.item() == 0.0


def test_default_dtype_float64_and_half_module():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = PBEDropout2d(3, p=0.3, seed=0).train()
        x = make_input().double()
        assert layer(x).dtype == torch.float64
        assert layer.ema_mask.dtype == layer.threshold_offset.dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    layer = layer.half()  # as Lightning's "16-true" does: the statistics stay float32
    assert layer.ema_mask.dtype == layer.threshold_offset.dtype == torch.float32
    y = layer(make_input().half())
    assert y.dtype == torch.float16 and y.isfinite().all()
    assert layer.eval()(make_input().half()).dtype == torch.float16


def test_apply_patch_mask_any_memory_format():
    x = make_input(2, 3, 8, 8)
    mask = (torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    want = apply_patch_mask(x, mask, 4)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    column_major = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert torch.equal(apply_patch_mask(channels_last, mask, 4), want)
    assert torch.equal(apply_patch_mask(column_major, mask, 4), want)
