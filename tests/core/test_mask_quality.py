import math

import pytest
import torch

from energymask.ersm import EnergyMask2d
from energymask.mask_quality import (
    SCORE_DEFINITIONS,
    layer_mask_scores,
    mask_quality,
    mask_scores,
    small_grid_warning,
    undecided_share,
)


def test_hand_computed():
    keep = torch.tensor([[[0.9, 0.1], [0.2, 0.3]]])
    obj = torch.zeros(1, 1, 4, 4)
    obj[0, 0, :2, :4] = 1  # top half
    q = mask_quality(keep, obj)
    assert q["iou"] == pytest.approx(0.5)  # kept top-left quarter vs top half
    assert q["pointing"] == 1.0
    assert q["keep_ratio"] == pytest.approx(0.375)
    assert q["hard_sparsity"] == 0.75
    assert q["relative_sparsity"] == 0.25  # 0.1 < 0.375 / 2
    assert q["keep_contrast"] == pytest.approx(0.5 - 0.25)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)  # noqa: E731
    assert q["entropy"] == pytest.approx((h(0.9) + h(0.1) + h(0.2) + h(0.3)) / 4, rel=1e-5)


def test_pointing_miss_and_edges():
    keep = torch.tensor([[[0.1, 0.1], [0.1, 0.8]]]).repeat(2, 1, 1)
    keep[1] = 0.5
    obj = torch.zeros(2, 4, 4)
    obj[:, 0, 0] = 1
    q = mask_scores(keep, obj)
    assert q["pointing"].tolist() == [0.0, 1.0]  # tie -> first token, which covers (0, 0)
    assert q["entropy"][1].item() == pytest.approx(1.0)
    empty = mask_quality(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4))
    assert empty["iou"] == 1.0 and empty["entropy"] == pytest.approx(0, abs=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"keep must have shape \(B, h, w\)"):
        mask_quality(torch.zeros(2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="object_mask must have shape"):
        mask_quality(torch.zeros(2, 2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="at least the token grid"):
        mask_quality(torch.zeros(1, 8, 8), torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="object_mask must be a tensor, but got list"):
        mask_quality(torch.zeros(1, 2, 2), [[1.0]])


def test_uniform_map_has_zero_spread_whatever_its_level():
    for level in (0.0, 0.45, 0.49, 1.0):
        q = mask_quality(torch.full((2, 4, 5), level))
        assert q["relative_sparsity"] == 0.0
        assert q["keep_gini"] == pytest.approx(0.0, abs=1e-6)
        assert q["keep_ratio"] == pytest.approx(level)
    dimmed = mask_quality(torch.full((1, 4, 5), 0.45))
    assert dimmed["hard_sparsity"] == 1.0  # dimming reads as hard sparsity, not as spread


@pytest.mark.parametrize(("q", "a", "b"), [(0.5, 0.9, 0.1), (0.25, 1.0, 0.0), (0.75, 0.2, 0.6)])
def test_two_level_map_known_values(q, a, b):
    n = 16
    keep = torch.full((n,), b)
    keep[: int(q * n)] = a
    keep = keep[torch.randperm(n, generator=torch.Generator().manual_seed(0))].view(1, 4, 4)
    scores = mask_quality(keep)
    mean = q * a + (1 - q) * b
    assert scores["keep_ratio"] == pytest.approx(mean)
    assert scores["keep_gini"] == pytest.approx(q * (1 - q) * abs(a - b) / mean, rel=1e-5)
    low = q if a < mean / 2 else (1 - q) if b < mean / 2 else 0.0
    assert scores["relative_sparsity"] == pytest.approx(low)
    assert scores["hard_sparsity"] == pytest.approx(q * (a < 0.5) + (1 - q) * (b < 0.5))


def test_gini_of_one_open_token_and_all_closed():
    keep = torch.zeros(2, 3, 3)
    keep[0, 1, 1] = 1.0
    gini = mask_scores(keep)["keep_gini"]
    assert gini[0].item() == pytest.approx(8 / 9)  # (N - 1) / N
    assert gini[1].item() == 0.0  # an all-closed map: defined as 0


def test_keep_contrast_on_a_known_object():
    keep = torch.tensor([[[0.9, 0.8], [0.2, 0.3]], [[0.5, 0.5], [0.5, 0.5]]])
    obj = torch.zeros(2, 1, 4, 4)
    obj[:, 0, :2, :] = 1  # the top row of tokens
    obj[:, 0, 2, 0] = 1  # and a quarter of the bottom-left token
    scores = mask_scores(keep, obj)
    on_object = (0.9 * 4 + 0.8 * 4 + 0.2 * 1) / 9
    on_background = (0.2 * 3 + 0.3 * 4) / 7
    assert scores["keep_contrast"][0].item() == pytest.approx(on_object - on_background)
    assert scores["keep_contrast"][1].item() == pytest.approx(0.0, abs=1e-6)


def test_keep_contrast_undefined_without_object_or_background():
    keep = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
    obj = torch.zeros(3, 4, 4)
    obj[1] = 1  # all object
    obj[2, 0, 0] = 1  # the only valid image
    scores = mask_scores(keep, obj)
    assert torch.isnan(scores["keep_contrast"][:2]).all()
    assert not torch.isnan(scores["keep_contrast"][2])
    assert mask_quality(keep, obj)["keep_contrast"] == pytest.approx(
        scores["keep_contrast"][2].item())  # mean over the images where it is defined


def test_batch_means_and_keys():
    g = torch.Generator().manual_seed(1)
    keep, obj = torch.rand(4, 3, 3, generator=g), torch.rand(4, 6, 6, generator=g)
    per_image, means = mask_scores(keep, obj), mask_quality(keep, obj)
    assert set(means) == {"keep_ratio", "hard_sparsity", "relative_sparsity", "keep_gini",
                          "entropy", "undecided", "iou", "pointing", "keep_contrast"}
    assert set(mask_quality(keep)) == {"keep_ratio", "hard_sparsity", "relative_sparsity",
                                       "keep_gini", "entropy", "undecided"}
    for k, v in per_image.items():
        assert v.shape == (4,) and v.dtype == torch.float32
        assert means[k] == pytest.approx(float(v.mean()))


def test_empty_batch():
    assert mask_quality(torch.zeros(0, 2, 2), torch.zeros(0, 4, 4)) == {}
    scores = mask_scores(torch.zeros(0, 2, 2), torch.zeros(0, 4, 4))
    assert all(v.shape == (0,) for v in scores.values()) and "keep_contrast" in scores


@pytest.mark.parametrize(
    ("keep", "kwargs", "match"),
    [
        (torch.full((1, 2, 2), float("nan")), {}, r"probabilities in \[0, 1\]"),
        (torch.full((1, 2, 2), 1.5), {}, r"probabilities in \[0, 1\]"),
        (torch.zeros(1, 0, 2), {}, "at least one token"),
        ([[0.5]], {}, r"keep must have shape \(B, h, w\), but got list"),
        (torch.zeros(1, 2, 2), {"threshold": 0.0}, r"threshold must be a number in \(0, 1\]"),
        (torch.zeros(1, 2, 2), {"threshold": float("nan")}, "threshold must be .* but got nan"),
        (torch.zeros(1, 2, 2), {"rank": torch.zeros(1, 2, 3)},
         r"rank must be None or a tensor of keep's shape \(1, 2, 2\), but got \(1, 2, 3\)"),
    ],
)
def test_bad_keep_and_threshold(keep, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_scores(keep, **kwargs)


def test_undecided_share_on_constructed_maps():
    bimodal = torch.tensor([[[0.0, 1.0], [0.05, 0.95]]])  # every token decided
    dimmed = torch.full((1, 2, 2), 0.45)  # every token undecided
    edges = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])  # (0.1, 0.9) is open: 2 of 4 inside
    keep = torch.cat([bimodal, dimmed, edges])
    assert undecided_share(keep).tolist() == [0.0, 1.0, 0.5]
    assert mask_scores(keep)["undecided"].tolist() == [0.0, 1.0, 0.5]


def test_binary_map_scores_and_ranked_pointing():
    keep = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # a binary map keeping the top half
    obj = torch.zeros(1, 4, 4)
    obj[0, 2:, 2:] = 1  # the object under the bottom-right token
    scores = mask_scores(keep, obj)
    assert scores["keep_ratio"].item() == 0.5 and scores["hard_sparsity"].item() == 0.5
    assert scores["entropy"].item() == 0.0 and scores["undecided"].item() == 0.0
    assert scores["pointing"].item() == 0.0  # tie -> first kept token, off the object
    rank = torch.tensor([[[0.6, 0.7], [0.1, 0.9]]])
    assert mask_scores(keep, obj, rank=rank)["pointing"].item() == 1.0


def test_layer_mask_scores_of_the_hard_gate():
    torch.manual_seed(0)
    layer = EnergyMask2d(2, bias_init=0.0, gate="hard", temperature=2.0).eval()
    layer(torch.randn(3, 2, 4, 4))
    scores = layer_mask_scores(layer)
    soft = torch.sigmoid(-layer.last_logits / 2.0)
    assert torch.equal(scores["keep_ratio"], layer.last_keep.flatten(1).mean(1))
    assert scores["undecided"].eq(0).all()  # the executed map is binary
    torch.testing.assert_close(scores["soft_undecided"], undecided_share(soft))


def test_object_masks_is_the_one_reader_of_batch_masks():
    from energymask.mask_quality import object_masks

    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1.0
    out = object_masks(mask, batch=2, size=(4, 4))
    assert out.dtype == torch.bool and out.shape == (2, 4, 4) and out.sum() == 8
    assert torch.equal(object_masks(mask[:, 0]), out)  # (B, H, W) as well
    with pytest.raises(ValueError, match=r"object_mask must have shape \(B, H, W\) or "
                                         r"\(B, 1, H, W\) with B = 3, but got \(2, 4, 4\)"):
        object_masks(mask, batch=3)
    with pytest.raises(ValueError, match=r"with \(H, W\) = \(8, 8\), but got \(2, 4, 4\)"):
        object_masks(mask, size=(8, 8))
    with pytest.raises(ValueError, match=r"or \(B, 1, H, W\), but got \(2, 2, 4, 4\)"):
        object_masks(torch.zeros(2, 2, 4, 4))
    with pytest.raises(TypeError, match=r"object_mask must be a tensor, but got list"):
        object_masks([[0.0]])


def test_small_grid_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4x4 and larger: no warning
        assert small_grid_warning((2, 4, 4)) == "" and small_grid_warning((16, 5)) == ""
    with pytest.warns(UserWarning, match=r"layer3: token grid 3x8 is below 4x4"):
        text = small_grid_warning((1, 3, 8), "layer3")
    assert text.startswith("token grid 3x8 is below 4x4")


def test_every_score_has_a_definition_and_every_definition_a_score():
    torch.manual_seed(0)
    layer = EnergyMask2d(2, bias_init=0.0).eval()
    layer(torch.randn(2, 2, 4, 4))
    scores = layer_mask_scores(layer, object_mask=torch.rand(2, 1, 4, 4) > 0.5)
    assert set(scores) == set(SCORE_DEFINITIONS)
