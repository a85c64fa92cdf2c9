"""The core's named choices: importable without torch, and each one the core accepts."""

import pytest
import torch

from energymask.constants import (
    DELETION_PROTOCOLS,
    GATES,
    OCCLUSION_FRACTIONS,
    OCCLUSION_PLACEMENTS,
    ORDERINGS,
)
from energymask.ersm import EnergyMask2d
from energymask.occlusion import occlude
from energymask.orderings import check_orderings


def test_imports_nothing_heavy(heavy_imports):
    assert heavy_imports("import energymask.constants") == []


def test_every_name_is_one_the_core_accepts():
    assert list(check_orderings(ORDERINGS)) == list(ORDERINGS)
    assert [EnergyMask2d(2, gate=gate).gate for gate in GATES] == list(GATES)
    images, objects = torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    objects[..., :4, :] = 1
    for placement in OCCLUSION_PLACEMENTS:
        out = occlude(images, 0.25, 2, placement=placement, object_mask=objects)
        assert out.shape == images.shape and (out == 0).any(), placement
    assert all(0.0 <= f <= 1.0 for f in OCCLUSION_FRACTIONS)
    assert all(meaning for meaning in DELETION_PROTOCOLS.values())


def test_the_error_messages_list_them():
    with pytest.raises(ValueError, match=r"gate must be one of \['soft', 'hard'\]"):
        EnergyMask2d(2, gate="sharp")
    with pytest.raises(ValueError, match=r"unknown ordering 'saliency'; valid names are "
                                         r"\['energy', 'magnitude', 'random', 'gradcam', "
                                         r"'feature_ablation'\]"):
        check_orderings(["saliency"])
