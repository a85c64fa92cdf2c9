import dataclasses
import gc
import math
import re
import weakref

import pytest
import torch
import torch.nn.functional as F

from energymask import EnergyMask2d, collect_regularizer, energy_mask_2d, energy_mask_layers
from energymask.ersm import (
    EnergyMaskOutput,
    ErsmSettings,
    computing_energies,
    energy_mask_2d_inference,
    forcing,
    noisy_keep,
    straight_through_gate,
)
from energymask.kernels import ErsmEnergy

from helpers import compiled_and_eager_layer


def loop_reference(x, weight, bias, p, lam, gamma, temperature):
    """docs/design.md §3 token by token, with Python loops."""
    b_, c_, h_, w_ = x.shape
    h, w = h_ // p, w_ // p
    unit = {}
    z = torch.zeros(b_, h, w, dtype=x.dtype)
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                tok = x[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(-1)
                u = tok / (tok.norm() + 1e-6)
                unit[b, i, j] = u
                bij = bias if bias.dim() == 0 else bias[i, j]
                z[b, i, j] = u @ weight + bij
    sim = torch.zeros_like(z)
    for (b, i, j), u in unit.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) != (0, 0) and (b, i + di, j + dj) in unit:
                    sim[b, i, j] += u @ unit[b, i + di, j + dj]
    keep = torch.sigmoid(-z / temperature)
    unary = lam * F.softplus(z)
    pairwise = gamma * F.softplus(sim)
    out = x.clone()
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                out[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p] *= keep[b, i, j]
    return out, z, keep, unary, pairwise


@pytest.mark.parametrize(
    ("shape", "p", "per_position"),
    [
        ((2, 3, 4, 6), 1, False),
        ((1, 2, 6, 4), 2, False),
        ((2, 3, 5, 3), 1, True),
        ((1, 1, 1, 1), 1, False),
    ],
)
def test_matches_loop_reference(shape, p, per_position):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    d = shape[1] * p * p
    weight = torch.randn(d, generator=g, dtype=torch.float64)
    grid = (shape[2] // p, shape[3] // p)
    bias = torch.randn(grid if per_position else (), generator=g, dtype=torch.float64)
    lam, gamma, t = 0.3, 0.7, 1.5
    res = energy_mask_2d(x, weight, bias, p, lam, gamma, t)
    out, z, keep, unary, pairwise = loop_reference(x, weight, bias, p, lam, gamma, t)
    torch.testing.assert_close(res.output, out)
    torch.testing.assert_close(res.logits, z)
    torch.testing.assert_close(res.keep, keep)
    torch.testing.assert_close(res.unary, unary)
    torch.testing.assert_close(res.pairwise, pairwise)
    torch.testing.assert_close(res.energy, unary + pairwise)
    torch.testing.assert_close(res.regularizer, (keep * (unary + pairwise)).mean())


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):
        res = energy_mask_2d(x, weight, bias, 2, 0.5, 0.5, 0.8, eta=0.3)
        return res.output, res.regularizer, res.energy

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_regularizer_gradient_reaches_weight_and_bias():
    layer = EnergyMask2d(4, grid_size=(3, 3), bias_init=0.0)
    layer(torch.randn(2, 4, 3, 3))
    layer.pop_regularizer().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def test_parameters_registered_at_construction():
    layer = EnergyMask2d(5, grid_size=(4, 2))
    names = dict(layer.named_parameters())
    assert set(names) == {"weight", "bias"}
    assert names["bias"].shape == (4, 2)
    assert EnergyMask2d(5).bias.shape == ()


def test_bias_init_starts_almost_closed():
    layer = EnergyMask2d(3)  # bias 6: keep ≈ sigmoid(-6 ± 1)
    layer(torch.randn(2, 3, 5, 5))
    assert layer.last_keep.max() < sigmoid_bound(6 - 1)


def sigmoid_bound(z):
    return 1 / (1 + math.exp(z))


def test_hard_mask_at_inference():
    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, hard_inference=True).eval()
    x = torch.randn(2, 3, 4, 4)
    out = layer(x)
    keep = layer.last_keep
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out, x * keep[:, None])
    layer.train()
    layer(x)
    assert ((layer.last_keep > 0) & (layer.last_keep < 1)).all()  # soft in training


def test_forced_mask_replaces_keep():
    layer = EnergyMask2d(2, token_size=2)
    x = torch.randn(1, 2, 4, 6)
    forced = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    layer.forced_mask = forced
    out = layer(x)
    expected = x * forced.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]
    torch.testing.assert_close(out, expected)


def test_eta_adds_mask_coherence():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(1, 2, 3, 3, generator=g), torch.randn(2, generator=g)
    bias = torch.tensor(0.0)
    plain = energy_mask_2d(x, w, bias)
    smooth = energy_mask_2d(x, w, bias, eta=2.0)
    k = plain.keep[0]
    pairs = sum(
        (k[i, j] - k[i + di, j + dj]) ** 2
        for i in range(3)
        for j in range(3)
        for di, dj in ((0, 1), (1, 0))
        if i + di < 3 and j + dj < 3
    )
    expected = plain.regularizer + 2.0 * 2 * pairs / 9  # each pair counted from both ends
    torch.testing.assert_close(smooth.regularizer, expected)


def test_last_maps_are_detached_and_regularizer_collected():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), EnergyMask2d(3))
    model(torch.randn(2, 1, 4, 4))
    layer = model[1]
    for t in (layer.last_keep, layer.last_logits, layer.last_energy):
        assert t.grad_fn is None and t.shape == (2, 4, 4)
    assert layer.regularizer.requires_grad
    assert list(energy_mask_layers(model)) == ["1"]
    r = collect_regularizer(model)
    assert r is not None and r.requires_grad
    assert collect_regularizer(model) is None  # taken
    model.eval()
    model(torch.randn(2, 1, 4, 4))
    assert layer.regularizer is None  # no regulariser in eval mode


def test_eval_energies_only_when_asked_and_same_as_training():
    torch.manual_seed(3)
    layer = EnergyMask2d(3, token_size=2, grid_size=(2, 3), bias_init=0.1, lam=0.5, gamma=0.5)
    x = torch.randn(2, 3, 4, 6)
    with torch.no_grad():
        out_train = layer.train()(x)
        train_maps = (layer.last_keep, layer.last_unary, layer.last_pairwise, layer.last_energy)
        out_eval = layer.eval()(x)
        assert layer.last_unary is None and layer.last_energy is None  # cheap path
        torch.testing.assert_close(out_eval, out_train)
        torch.testing.assert_close(layer.last_keep, train_maps[0])
        with computing_energies(layer):
            out_energies = layer(x)
        assert layer.eval_energies is False  # restored
    eval_maps = (layer.last_keep, layer.last_unary, layer.last_pairwise, layer.last_energy)
    torch.testing.assert_close(out_energies, out_train)
    for a, b in zip(train_maps, eval_maps, strict=True):
        torch.testing.assert_close(a, b)
    assert layer.regularizer is None  # eval mode has no regulariser, even with energies


def test_eval_energies_keep_the_hard_mask():
    torch.manual_seed(4)
    layer = EnergyMask2d(3, bias_init=0.0, hard_inference=True).eval()
    x = torch.randn(2, 3, 4, 4)
    cheap = layer(x)
    with computing_energies(layer):
        full = layer(x)
    assert torch.equal(cheap, full) and set(layer.last_keep.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("mode", ["eval", "eval_energies", "train_no_grad"])
def test_input_not_kept_alive(mode):
    layer = EnergyMask2d(3, bias_init=0.0).train(mode.startswith("train"))
    layer.eval_energies = mode == "eval_energies"
    x = torch.randn(2, 3, 4, 4)
    alive = weakref.ref(x)
    with torch.no_grad():
        layer(x)
    held = [v for v in vars(layer).values() if isinstance(v, torch.Tensor)]
    held += [t for v in vars(layer).values() if isinstance(v, tuple) for t in v]
    assert held and all(t.untyped_storage().data_ptr() != x.data_ptr() for t in held)
    del x
    gc.collect()
    assert alive() is None


def test_result_types_share_one_field_order():
    assert EnergyMaskOutput._fields[: len(ErsmEnergy._fields)] == ErsmEnergy._fields
    assert EnergyMaskOutput._fields[len(ErsmEnergy._fields) :] == ("energy", "regularizer")
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(1, 2, 3, 3, generator=g), torch.randn(2, generator=g)
    res = energy_mask_2d(x, w, torch.tensor(0.5), forced_mask=torch.ones(1, 3, 3))
    output, logits, keep = energy_mask_2d_inference(
        x, w, torch.tensor(0.5), forced_mask=torch.ones(1, 3, 3)
    )
    assert torch.equal(res.keep, torch.ones(1, 3, 3)) and torch.equal(keep, res.keep)
    torch.testing.assert_close(logits, res.logits)
    torch.testing.assert_close(output, res.output)


@pytest.mark.parametrize(("shape", "p"), [((0, 3, 4, 6), 1), ((0, 3, 4, 6), 2), ((2, 3, 0, 4), 2)])
@pytest.mark.parametrize("training", [True, False])
def test_zero_size_input_gives_empty_result(shape, p, training):
    layer = EnergyMask2d(3, token_size=p, bias_init=0.0).train(training)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    grid = (shape[0], shape[2] // p, shape[3] // p)
    assert out.shape == x.shape and layer.last_keep.shape == grid
    if training:
        assert layer.last_energy.shape == grid
        reg = collect_regularizer(layer)
        assert reg.item() == 0.0
        (out.sum() + reg).backward()  # no error, no NaN
        assert x.grad.shape == x.shape
    else:
        assert layer.regularizer is None


def test_extra_repr_shows_settings():
    assert "token_size=2" in repr(EnergyMask2d(3, token_size=2))


@pytest.mark.parametrize(
    ("kwargs", "x", "match"),
    [
        ({}, torch.randn(1, 4, 4, 4), "must have 3 channels, but got 4"),
        ({"token_size": 2}, torch.randn(1, 3, 5, 4), "divisible by token_size=2, but got 5x4"),
        ({}, torch.randn(3, 4, 4), r"4D feature map \(B, C, H, W\), but got shape \(3, 4, 4\)"),
        ({}, torch.full((1, 3, 2, 2), float("nan")), "must be finite"),
        ({}, torch.tensor([1.0, 2.0, float("inf")]).view(1, 3, 1, 1), "must be finite"),
        ({"grid_size": (3, 3)}, torch.randn(1, 3, 4, 4), r"grid size \(3, 3\) does not match"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_bad_input(kwargs, x, match, training):
    with pytest.raises(ValueError, match=match):
        EnergyMask2d(3, **kwargs).train(training)(x)


@pytest.mark.parametrize(
    ("forced", "match"),
    [
        (torch.ones(1, 2, 2), r"forced_mask must have shape \(B, h, w\) = \(1, 4, 4\)"),
        (torch.full((1, 4, 4), 0.5), r"values must be in \{0, 1\}"),
    ],
)
def test_bad_forced_mask(forced, match):
    layer = EnergyMask2d(3)
    layer.forced_mask = forced
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(1, 3, 4, 4))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, but got 0.0"),
        ({"token_size": 0}, "token_size must be a positive int, but got 0"),
        ({"lam": -1.0}, "lam must be >= 0, but got -1.0"),
        ({"grid_size": (3,)}, r"grid_size must be None or \(h, w\)"),
        ({"grid_size": (True, 2)}, r"grid_size must be None or \(h, w\) positive ints"),
        ({"grid_size": 4}, r"grid_size must be None or \(h, w\) positive ints, but got 4"),
        ({"lam": NAN}, r"lam must be finite \(not NaN or Inf\), but got nan"),
        ({"gamma": INF}, r"gamma must be finite \(not NaN or Inf\), but got inf"),
        ({"temperature": NAN}, r"temperature must be finite \(not NaN or Inf\), but got nan"),
        ({"temperature": INF}, r"temperature must be finite \(not NaN or Inf\), but got inf"),
        ({"eta": -INF}, r"eta must be finite \(not NaN or Inf\), but got -inf"),
        ({"bias_init": NAN}, r"bias_init must be finite \(not NaN or Inf\), but got nan"),
        ({"bias_init": INF}, r"bias_init must be finite \(not NaN or Inf\), but got inf"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnergyMask2d(3, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((True,), {}, "channels must be a positive int, but got True"),
        ((3.0,), {}, "channels must be a positive int, but got 3.0"),
        ((3,), {"token_size": True}, "token_size must be a positive int, but got True"),
        ((3,), {"token_size": 2.0}, "token_size must be a positive int, but got 2.0"),
        ((3,), {"lam": "0.1"}, "lam must be a real number, but got '0.1'"),
        ((3,), {"temperature": True}, "temperature must be a real number, but got True"),
        ((3,), {"bias_init": None}, "bias_init must be a real number, but got None"),
        ((3,), {"hard_inference": 1}, "hard_inference must be a bool, but got 1"),
        ((3,), {"check_finite": "yes"}, "check_finite must be a bool, but got 'yes'"),
    ],
)
def test_settings_of_wrong_type(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        EnergyMask2d(*args, **kwargs)


def test_bad_channels():
    with pytest.raises(ValueError, match="channels must be a positive int, but got 0"):
        EnergyMask2d(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1}, "temperature must be > 0"),
        ({"temperature": NAN}, r"temperature must be finite \(not NaN or Inf\), but got nan"),
        ({"lam": NAN}, r"lam must be finite \(not NaN or Inf\), but got nan"),
        ({"gamma": -INF}, r"gamma must be finite \(not NaN or Inf\), but got -inf"),
        ({"eta": NAN}, r"eta must be finite \(not NaN or Inf\), but got nan"),
    ],
)
def test_functional_setting_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        energy_mask_2d(torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0), **kwargs)
    if set(kwargs) == {"temperature"}:  # the inference path's only float setting
        with pytest.raises(ValueError, match=match):
            energy_mask_2d_inference(
                torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0), **kwargs
            )


def test_settings_are_validated_once_and_read_only():
    layer = EnergyMask2d(3, lam=0.5)
    assert layer.settings == ErsmSettings(lam=0.5) and layer.lam == 0.5
    with pytest.raises(AttributeError, match="temperature is a setting of the ERSM layer"):
        layer.temperature = NAN
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.settings.temperature = NAN  # type: ignore[misc]
    assert EnergyMask2d(3, layer.settings, gate="hard").settings == ErsmSettings(
        lam=0.5, gate="hard")


def test_settings_dataclass():
    s = ErsmSettings(token_size=2, lam=1, grid_size=[2, 3])
    assert (s.lam, type(s.lam), s.grid_size) == (1.0, float, (2, 3))
    assert ErsmSettings.of(s, gate="hard") == dataclasses.replace(s, gate="hard")
    with pytest.raises(TypeError, match=r"unknown ERSM setting\(s\) \['lamda'\]"):
        ErsmSettings.of(None, lamda=0.1)
    with pytest.raises(TypeError, match="settings must be an ErsmSettings or None, but got dict"):
        EnergyMask2d(3, {"lam": 0.1})


@pytest.mark.parametrize("gate", ["HARD", "binary", None, 1])
def test_bad_gate(gate):
    match = r"gate must be one of \['soft', 'hard'\] .*but got " + re.escape(repr(gate))
    with pytest.raises(ValueError, match=match):
        EnergyMask2d(3, gate=gate)
    with pytest.raises(ValueError, match=match):
        energy_mask_2d(torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0), gate=gate)
    with pytest.raises(ValueError, match=match):
        energy_mask_2d_inference(torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0),
                                 gate=gate)


@pytest.mark.parametrize("token_size", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_hard_gate_executes_exactly_binary_mask(token_size, training):
    torch.manual_seed(0)
    layer = EnergyMask2d(3, token_size=token_size, bias_init=0.0, gate="hard").train(training)
    x = torch.randn(2, 3, 6, 4)
    out = layer(x)
    keep = layer.last_keep
    assert ((keep == 0) | (keep == 1)).all() and 0 < keep.mean() < 1
    assert torch.equal(keep, (layer.last_logits <= 0).to(keep.dtype))  # 1[sigmoid(-z) >= 0.5]
    mask = keep.repeat_interleave(token_size, 1).repeat_interleave(token_size, 2)[:, None]
    assert torch.equal(out, x * mask)  # each cell kept as is or zeroed
    layer.eval()
    assert torch.equal(layer(x), out)  # deterministic, and train == eval
    assert torch.equal(layer.last_keep, keep)


def test_straight_through_gate_gradient_matches_soft_keep():
    torch.manual_seed(0)
    keep = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    m = straight_through_gate(keep)
    assert torch.equal(m, (keep >= 0.5).double())
    g = torch.randn_like(keep)
    (grad,) = torch.autograd.grad((m * g).sum(), keep)
    assert torch.equal(grad, g)


def test_hard_gate_gradient_is_the_soft_layers_with_binary_forward():
    """Reference: the hard layer's gradients on w, b and x equal those of the soft
    layer's graph with the binary mask's value swapped in (finite differences are
    zero almost everywhere for a step function, so the straight-through estimator
    is checked against its definition, and the soft path against finite differences)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    res = energy_mask_2d(x, w, b, 1, 0.3, 0.2, 1.5, gate="hard")
    got = torch.autograd.grad((res.output * g).sum() + res.regularizer, (x, w, b))
    soft = energy_mask_2d(x, w, b, 1, 0.3, 0.2, 1.5)
    m = (soft.keep >= 0.5).double()
    executed = m + soft.keep - soft.keep.detach()
    out = x * executed[:, None]
    reg = (executed * soft.energy).mean()
    want = torch.autograd.grad((out * g).sum() + reg, (x, w, b))
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)
    assert torch.equal(res.output, x * m[:, None])
    torch.testing.assert_close(res.regularizer, (m * soft.energy).mean())
    # the soft keep map the estimator differentiates, against finite differences
    assert torch.autograd.gradcheck(
        lambda w_, b_: energy_mask_2d(x.detach(), w_, b_, 1, 0.3, 0.2, 1.5).keep, (w, b))


def test_hard_gate_with_forced_masks():
    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, gate="hard").eval()
    x = torch.randn(1, 3, 4, 4)
    layer(x)
    executed = layer.last_keep.clone()
    forced = (torch.rand(1, 4, 4) > 0.5).float()
    with forcing(layer, forced):
        layer(x)
    assert torch.equal(layer.last_keep, forced)
    with forcing(layer, forced, soft=True):
        layer(x)
    assert torch.equal(layer.last_keep, executed * forced)


@pytest.mark.parametrize("param", ["weight", "bias"])
@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("training", [True, False])
def test_non_finite_parameters_named(param, value, training):
    layer = EnergyMask2d(3).train(training)
    with torch.no_grad():
        getattr(layer, param).view(-1)[0] = value
    with pytest.raises(ValueError, match=f"{param} \\(a parameter of the ERSM layer\\) must be "
                                         "finite"):
        layer(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.ones(1, 3, 2, 2, dtype=torch.long), "x must be a floating-point .* torch.int64"),
        (torch.ones(1, 3, 2, 2, dtype=torch.bool), "x must be a floating-point .* torch.bool"),
        ([[1.0]], r"x must be a torch.Tensor \(B, C, H, W\), but got list"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_input_of_wrong_type(x, match, training):
    with pytest.raises(TypeError, match=match):
        EnergyMask2d(3).train(training)(x)


@pytest.mark.parametrize(
    ("weight", "bias", "match"),
    [
        (torch.ones(1, 3), torch.tensor(0.0), r"weight must be a 1D tensor .* but got \(1, 3\)"),
        ([1.0, 1.0, 1.0], torch.tensor(0.0), "weight must be a 1D tensor .* but got list"),
        (torch.ones(3), 0.0, r"bias must be a scalar tensor \(\) .* but got float"),
        (torch.ones(3), torch.zeros(2), r"bias must be .* \(h, w\) one, but got \(2,\)"),
    ],
)
@pytest.mark.parametrize("function", [energy_mask_2d, energy_mask_2d_inference])
def test_functional_parameters_of_wrong_type(weight, bias, match, function):
    with pytest.raises(TypeError, match=match):
        function(torch.randn(1, 3, 2, 2), weight, bias)


def test_forced_mask_of_wrong_type():
    layer = EnergyMask2d(3)
    with forcing(layer, [[1.0]]), pytest.raises(TypeError, match="forced_mask must be a tensor"):
        layer(torch.randn(1, 3, 1, 1))


def test_forcing_binary_soft_and_restored():
    torch.manual_seed(0)
    layer = EnergyMask2d(4, bias_init=0.0).eval()
    x = torch.randn(2, 4, 3, 3)
    layer(x)
    soft = layer.last_keep.clone()
    mask = torch.ones(2, 3, 3)
    mask[:, 0, 0] = 0
    with forcing(layer, mask):
        out = layer(x)
        assert torch.equal(layer.last_keep, mask)
        assert torch.equal(out, x * mask[:, None])
    with forcing(layer, mask, soft=True):
        layer(x)
        assert torch.equal(layer.last_keep, soft * mask)
    assert layer.forced_mask is None and layer.forced_soft is False
    with pytest.raises(RuntimeError, match="boom"), forcing(layer, mask):
        raise RuntimeError("boom")
    assert layer.forced_mask is None


def test_keep_target_budget_on_the_executed_mask():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 4, 4), torch.randn(3), torch.tensor(0.2)
    plain = energy_mask_2d(x, w, b, gate="hard")
    budget = energy_mask_2d(x, w, b, gate="hard", keep_target=0.25)
    per_image = plain.keep.flatten(1).mean(1)
    torch.testing.assert_close(budget.regularizer - plain.regularizer,
                               (per_image - 0.25).pow(2).mean())
    assert torch.equal(budget.output, plain.output)  # a budget changes the loss, not the mask
    soft = energy_mask_2d(x, w, b, keep_target=0.25)  # the soft gate's executed map: soft keep
    torch.testing.assert_close(soft.regularizer - energy_mask_2d(x, w, b).regularizer,
                               (soft.keep.flatten(1).mean(1) - 0.25).pow(2).mean())


@pytest.mark.parametrize(("value", "error", "match"), [
    (1.5, ValueError, r"keep_target must be None or in \[0, 1\], but got 1.5"),
    (-0.1, ValueError, "keep_target must be >= 0, but got -0.1"),
    (NAN, ValueError, r"keep_target must be finite"),
    ("0.5", TypeError, "keep_target must be a real number, but got '0.5'"),
])
def test_bad_keep_target(value, error, match):
    with pytest.raises(error, match=match):
        EnergyMask2d(3, keep_target=value)
    with pytest.raises(error, match=match):
        energy_mask_2d(torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0),
                       keep_target=value)


def test_hard_gate_on_the_triton_kernels_equals_the_reference():
    """Ours applies on the kernel's keep map: same output, regulariser and gradients
    with the Triton kernels (interpreter on CPU) as with the PyTorch reference."""
    pytest.importorskip("triton")
    from energymask.kernels import use_backend

    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, gate="hard", keep_target=0.3)
    x = torch.randn(2, 3, 5, 4, requires_grad=True)

    def run():
        out = layer(x)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss = loss + layer.pop_regularizer()
        return out, loss, torch.autograd.grad(loss, (x, layer.weight, layer.bias))

    want = run()
    with use_backend("triton"):
        got = run()
    assert torch.equal(got[0], want[0])  # the same binary mask
    torch.testing.assert_close(got[1], want[1])
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_hard_gate_compiles_without_graph_breaks():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, check_finite=False, gate="hard", keep_target=0.3)
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    (got, got_dx), (want, want_dx) = compiled_and_eager_layer(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-4, atol=1e-5)


def test_gate_noise_binary_in_training_deterministic_in_eval():
    """Ours: gate_noise draws a fresh binary mask per training forward (the noise can
    flip tokens), and eval executes the deterministic 1[z <= 0]."""
    torch.manual_seed(0)
    layer = EnergyMask2d(3, bias_init=0.0, gate="hard", gate_noise=1.0)
    x = torch.randn(4, 3, 6, 6)
    out = layer(x)
    keep = layer.last_keep
    assert ((keep == 0) | (keep == 1)).all()
    assert torch.equal(out, x * keep[:, None])
    torch.testing.assert_close(layer.pop_regularizer(),
                               (keep * layer.last_energy).mean())  # on the executed mask
    assert not torch.equal(keep, (layer.last_logits <= 0).float())  # noise flipped some
    layer.eval()
    out_eval = layer(x)
    assert torch.equal(layer.last_keep, (layer.last_logits <= 0).float())
    assert torch.equal(layer(x), out_eval)


def test_gate_noise_gradient_is_the_noisy_soft_keeps():
    """The straight-through Gumbel-sigmoid against its definition: with the same noise
    draw, the gradients equal those of sigmoid(−z/T + σg) with the binary value swapped
    in; the noisy soft keep itself against finite differences (noise fixed)."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.manual_seed(5)
    res = energy_mask_2d(x, w, b, 1, 0.3, 0.2, 1.5, gate="hard", gate_noise=0.7)
    got = torch.autograd.grad((res.output * g).sum() + res.regularizer, (x, w, b))
    soft = energy_mask_2d(x, w, b, 1, 0.3, 0.2, 1.5)
    torch.manual_seed(5)
    u = torch.rand_like(soft.logits).clamp_(1e-6, 1 - 1e-6)
    keep = torch.sigmoid(-soft.logits / 1.5 + 0.7 * torch.log(u / (1 - u)))
    executed = (keep >= 0.5).double() + keep - keep.detach()
    want = torch.autograd.grad((x * executed[:, None] * g).sum()
                               + (executed * soft.energy).mean(), (x, w, b))
    assert torch.equal(res.keep, (keep >= 0.5).double())
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)
    assert torch.equal(noisy_keep(soft.logits, 1.5, 0.0), torch.sigmoid(-soft.logits / 1.5))

    def fixed_noise(w_, b_):
        torch.manual_seed(5)
        logits = energy_mask_2d(x.detach(), w_, b_, 1, 0.3, 0.2, 1.5).logits
        return noisy_keep(logits, 1.5, 0.7)

    assert torch.autograd.gradcheck(fixed_noise, (w, b))


@pytest.mark.parametrize(("fields", "error", "match"), [
    ({"gate": "hard", "gate_noise": -0.5}, ValueError, "gate_noise must be >= 0, but got -0.5"),
    ({"gate": "hard", "gate_noise": INF}, ValueError, "gate_noise must be finite"),
    ({"gate": "hard", "gate_noise": "1"}, TypeError,
     "gate_noise must be a real number, but got '1'"),
    ({"gate_noise": 1.0}, ValueError,
     r"gate_noise \(ours\) applies to gate=\"hard\" only, but got gate='soft'"),
])
def test_bad_gate_noise(fields, error, match):
    with pytest.raises(error, match=match):
        EnergyMask2d(3, **fields)
    with pytest.raises(error, match=match):
        energy_mask_2d(torch.randn(1, 1, 2, 2), torch.ones(1), torch.tensor(0.0), **fields)


def test_hard_gate_temperature_changes_the_gradient_not_the_mask():
    """The remedy measured in docs/design.md §3 (ours: gate="hard" with T = 0.1): the
    executed mask 1[z <= 0] is the same for every T; the gradient is the soft keep
    sigmoid(−z/T)'s, checked against finite differences at T = 0.1."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    cold = energy_mask_2d(x, w, b, temperature=0.1, gate="hard")
    warm = energy_mask_2d(x, w, b, temperature=1.0, gate="hard")
    assert torch.equal(cold.keep, warm.keep) and torch.equal(cold.output, warm.output)
    assert torch.equal(cold.keep, (cold.logits <= 0).double())
    g = torch.randn(2, 4, 4, dtype=torch.float64)
    got = torch.autograd.grad((cold.keep * g).sum(), (w, b), retain_graph=True)
    want = torch.autograd.grad((torch.sigmoid(-cold.logits / 0.1) * g).sum(), (w, b))
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(
        lambda w_, b_: energy_mask_2d(x, w_, b_, temperature=0.1).keep, (w, b))
