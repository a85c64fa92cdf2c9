import pytest
import torch
import torch.nn.functional as F

from energymask.dropblock import DropBlock2d, drop_block_2d


def make_input(b=4, c=3, h=16, w=16, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def expected_drop_rate(p, k, h, w):
    """Exact E[dropped fraction]: pixel (i, j) is dropped unless none of the n_ij valid
    centres whose k x k block covers it is seeded, each seeded with probability gamma."""
    gamma = p * h * w / k**2 / ((h - k + 1) * (w - k + 1))
    total = 0.0
    for i in range(h):
        for j in range(w):
            rows = sum(1 for r in range(h - k + 1) if r <= i < r + k)  # block top rows
            cols = sum(1 for c in range(w - k + 1) if c <= j < c + k)
            total += 1.0 - (1.0 - gamma) ** (rows * cols)
    return total / (h * w)


def is_union_of_blocks(dropped, k):
    """True when every dropped pixel lies in a k x k square of dropped pixels inside the map."""
    full = -F.max_pool2d(-dropped, k, stride=1)  # 1 where the whole window is dropped
    covered = F.max_pool2d(F.pad(full, (k - 1,) * 4), k, stride=1)
    return torch.equal(covered, dropped)


def test_eval_and_p_zero_are_identity():
    x = make_input()
    layer = DropBlock2d(0.5, 3).eval()
    assert layer(x) is x
    assert drop_block_2d(x, 0.5, 3, training=False) is x
    assert DropBlock2d(0.0, 3).train()(x) is x
    assert drop_block_2d(x, 0.0, 3) is x
    assert not torch.equal(layer.train()(x), x)


# Measured on 4096 planes (seed 0): p=0.05 -> 0.0485, 0.1 -> 0.0944, 0.2 -> 0.1802,
# 0.3 -> 0.2571, 0.5 -> 0.3901, 0.7 -> 0.4986, 0.9 -> 0.5883. timm's gamma gives p only
# for non-overlapping blocks; overlaps make the rate fall short of p, by > 0.05 from p = 0.5.
@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
def test_drop_rate_matches_gamma(p):
    x = torch.ones(4096, 1, 16, 16)
    rate = 1.0 - drop_block_2d(x, p, 3, generator=gen(), scale=False).mean().item()
    assert abs(rate - expected_drop_rate(p, 3, 16, 16)) < 0.005
    assert rate < p
    if p <= 0.3:
        assert abs(rate - p) < 0.05


@pytest.mark.parametrize(
    ("h", "w", "k"), [(32, 32, 3), (32, 32, 5), (32, 32, 2), (31, 20, 4), (7, 5, 3)]
)
def test_dropped_regions_are_full_blocks(h, w, k):
    y = drop_block_2d(torch.ones(64, 2, h, w), 0.1, k, generator=gen(), scale=False)
    dropped = 1.0 - y
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert is_union_of_blocks(dropped, k)
    # no block is lost at the bottom / right border (a wrong crop would truncate them)
    assert dropped[..., -1, :].any() and dropped[..., :, -1].any()
    assert dropped[..., 0, :].any() and dropped[..., :, 0].any()


def test_small_map_clips_block_size():
    # block_size 7 on a 3x3 map is clipped to 3: one valid centre, gamma = p, whole planes drop
    y = drop_block_2d(torch.ones(4000, 1, 3, 3), 0.3, 7, generator=gen(), scale=False)
    per_plane = y.flatten(1)
    assert ((per_plane == 0).all(1) | (per_plane == 1).all(1)).all()
    assert abs(1.0 - y.mean().item() - 0.3) < 0.03
    # non-square maps smaller than block_size: clipped to min(H, W) = 2
    y = drop_block_2d(torch.ones(256, 1, 2, 5), 0.5, 4, generator=gen(), scale=False)
    assert y.shape == (256, 1, 2, 5)
    assert is_union_of_blocks(1.0 - y, 2)
    assert (y == 0).any()


def test_masks_are_per_sample_and_channel():
    y = drop_block_2d(torch.ones(8, 4, 16, 16), 0.3, 3, generator=gen(), scale=False)
    planes = y.flatten(0, 1)
    assert all(not torch.equal(planes[0], plane) for plane in planes[1:])


def test_rescaling_keeps_mean_of_ones():
    x = torch.ones(64, 8, 16, 16)
    y = drop_block_2d(x, 0.3, 3, generator=gen())
    kept = (y > 0).sum().item()
    assert 0 < kept < x.numel()
    torch.testing.assert_close(y.mean(), torch.tensor(1.0))
    torch.testing.assert_close(y[y > 0], torch.full((kept,), x.numel() / kept))


def test_nothing_kept_gives_zeros():
    # 1x1 map, p close to 1: every plane is dropped with probability 0.999
    y = drop_block_2d(torch.ones(2, 1, 1, 1), 0.999, 3, generator=gen())
    assert torch.equal(y, torch.zeros(2, 1, 1, 1))


def test_seeded_reproducibility():
    x = make_input()
    a = drop_block_2d(x, 0.3, 3, generator=gen(7))
    b = drop_block_2d(x, 0.3, 3, generator=gen(7))
    c = drop_block_2d(x, 0.3, 3, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    layer_a = DropBlock2d(0.3, 3, generator=gen(7)).train()
    layer_b = DropBlock2d(0.3, 3, generator=gen(7)).train()
    a1, a2 = layer_a(x), layer_a(x)
    b1, b2 = layer_b(x), layer_b(x)
    assert torch.equal(a1, a) and torch.equal(b1, a)
    assert torch.equal(a2, b2) and not torch.equal(a1, a2)  # the generator advances


def test_gradient_only_through_kept_positions_with_scale():
    x = make_input().requires_grad_()
    drop_block_2d(x, 0.3, 3, generator=gen(3)).sum().backward()
    applied = drop_block_2d(torch.ones_like(x), 0.3, 3, generator=gen(3))  # mask * scale
    scale = applied.numel() / (applied > 0).sum().item()
    assert scale > 1.0
    assert torch.equal(x.grad, applied)
    values = x.grad.unique()
    assert values.numel() == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    x = torch.ones(16, 8, 16, 16)
    want = drop_block_2d(x, 0.3, 4, generator=gen())
    y = drop_block_2d(x.to(dtype), 0.3, 4, generator=gen())
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert torch.equal(y == 0, want == 0)  # same mask as float32
    torch.testing.assert_close(y.float(), want, atol=0, rtol=1e-2)


def test_bf16_autocast_layer():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    layer = DropBlock2d(0.3, 5, generator=gen()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(make_input())
        y = layer(h)
    assert y.dtype == h.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()


def test_repr():
    assert "drop_prob=0.2, block_size=5, scale=False" in repr(DropBlock2d(0.2, 5, scale=False))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop_prob": 1.0}, r"drop_prob must be in \[0, 1\), but got 1.0"),
        ({"drop_prob": -0.1}, "drop_prob must be in"),
        ({"drop_prob": float("nan")}, "drop_prob must be finite, but got nan"),
        ({"drop_prob": float("inf")}, "drop_prob must be finite, but got inf"),
        ({"block_size": 0}, "block_size must be an int >= 1, but got 0"),
        ({"block_size": 2.0}, "block_size must be an int >= 1, but got 2.0"),
        ({"block_size": True}, "block_size must be an int >= 1, but got True"),
    ],
)
def test_bad_settings(kwargs, match):
    settings = {"drop_prob": 0.1, "block_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        DropBlock2d(**settings)
    with pytest.raises(ValueError, match=match):
        drop_block_2d(make_input(), **settings)
    with pytest.raises(ValueError, match=match):  # checked even when it would be the identity
        drop_block_2d(make_input(), training=False, **settings)


@pytest.mark.parametrize("shape", [(8, 8), (3, 8, 8), (1, 1, 3, 8, 8)])
def test_bad_inputs(shape):
    match = r"x must be 4D \(B, C, H, W\), but got shape"
    with pytest.raises(ValueError, match=match):
        drop_block_2d(torch.zeros(shape), 0.1, 3)
    with pytest.raises(ValueError, match=match):
        DropBlock2d(0.1, 3).eval()(torch.zeros(shape))


def test_bad_types():
    with pytest.raises(TypeError, match="drop_prob must be a float in \\[0, 1\\), but got '0.1'"):
        DropBlock2d("0.1", 3)
    with pytest.raises(TypeError, match="x must be a floating point tensor, but got torch.int64"):
        drop_block_2d(torch.ones(1, 1, 8, 8, dtype=torch.long), 0.1, 3)
    with pytest.raises(TypeError, match="x must be a Tensor"):
        drop_block_2d([[1.0]], 0.1, 3)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)])
def test_zero_size_input_gives_empty_result(shape):
    x = torch.zeros(shape)
    assert drop_block_2d(x, 0.3, 3) is x
    assert DropBlock2d(0.3, 3).train()(x) is x
