import math

import pytest
import torch

from energymask.mask_quality import mask_quality


def test_hand_computed():
    keep = torch.tensor([[[0.9, 0.1], [0.2, 0.3]]])
    obj = torch.zeros(1, 1, 4, 4)
    obj[0, 0, :2, :4] = 1  # top half
    q = mask_quality(keep, obj)
    assert q["iou"].item() == pytest.approx(0.5)  # kept top-left quarter vs top half
    assert q["pointing"].item() == 1.0
    assert q["keep_ratio"].item() == pytest.approx(0.375)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)  # noqa: E731
    assert q["entropy"].item() == pytest.approx((h(0.9) + h(0.1) + h(0.2) + h(0.3)) / 4, rel=1e-5)


def test_pointing_miss_and_edges():
    keep = torch.tensor([[[0.1, 0.1], [0.1, 0.8]]]).repeat(2, 1, 1)
    keep[1] = 0.5
    obj = torch.zeros(2, 4, 4)
    obj[:, 0, 0] = 1
    q = mask_quality(keep, obj)
    assert q["pointing"].tolist() == [0.0, 1.0]  # tie -> first token, which covers (0, 0)
    assert q["entropy"][1].item() == pytest.approx(1.0)
    empty = mask_quality(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4))
    assert empty["iou"].item() == 1.0 and empty["entropy"].item() == pytest.approx(0, abs=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"keep must have shape \(B, h, w\)"):
        mask_quality(torch.zeros(2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="object_mask must have shape"):
        mask_quality(torch.zeros(2, 2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="at least the token grid"):
        mask_quality(torch.zeros(1, 8, 8), torch.zeros(1, 4, 4))
