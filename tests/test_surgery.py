import pytest
import torch
from torch import nn

from energymask import (
    Classifier,
    EnergyMask2d,
    InsertedAfter,
    insert_after,
    insertable_names,
    inserted_layers,
    remove_inserted,
    small_cnn,
)
from energymask.surgery import output_shapes


def ersm_factory(name, channels):
    return EnergyMask2d(channels, bias_init=0.0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Classifier(small_cnn(1, (4, 6, 8)), 8, 3).eval()


def test_round_trip_restores_outputs_and_state(model):
    x = torch.randn(2, 1, 64, 64)
    before = model(x)
    keys = list(model.state_dict())
    layers = insert_after(model, ["backbone.layer2", "backbone.layer3"], ersm_factory)
    assert set(layers) == {"backbone.layer2", "backbone.layer3"}
    assert isinstance(model.backbone.layer2, InsertedAfter)
    assert layers["backbone.layer2"].channels == 6
    masked = model(x)
    assert not torch.allclose(masked, before)  # the masks act
    assert layers["backbone.layer3"].last_keep.shape == (2, 8, 8)
    assert set(inserted_layers(model, EnergyMask2d)) == set(layers)
    removed = remove_inserted(model)
    assert set(removed) == set(layers)
    torch.testing.assert_close(model(x), before)
    assert list(model.state_dict()) == keys


def test_insertable_names_with_example(model):
    names = insertable_names(model, torch.randn(1, 1, 64, 64))
    assert "backbone.layer1" in names and "backbone.layer3.0" in names
    assert "head" not in names and "pool" in names  # pool keeps 4D (B, C, 1, 1)
    assert "head" in insertable_names(model)


def test_nested_insertions_are_removed_inside_out(model):
    insert_after(model, "backbone.layer1", ersm_factory)
    insert_after(model, "backbone", ersm_factory)
    assert "backbone.layer1" not in insertable_names(model)  # hidden inside a wrapper
    remove_inserted(model)
    assert not inserted_layers(model)
    assert isinstance(model.backbone, nn.Sequential)


def test_channels_override_for_blocks_without_conv():
    model = nn.Sequential(nn.Identity())
    with pytest.raises(ValueError, match=r"cannot tell the output channels of '0': pass channels"):
        insert_after(model, "0", ersm_factory)
    layers = insert_after(model, "0", ersm_factory, channels={"0": 2})
    assert model(torch.randn(1, 2, 3, 3)).shape == (1, 2, 3, 3)
    assert layers["0"].channels == 2


def test_unknown_name_lists_valid_ones(model):
    with pytest.raises(
        ValueError, match=r"unknown layer name 'layer9'; valid names are: backbone, "
    ):
        insert_after(model, "layer9", ersm_factory)


def test_twice_on_same_block(model):
    insert_after(model, "backbone.layer2", ersm_factory)
    with pytest.raises(ValueError, match="already inserted after 'backbone.layer2'"):
        insert_after(model, "backbone.layer2", ersm_factory)


def test_duplicate_names(model):
    with pytest.raises(ValueError, match="names must be distinct"):
        insert_after(model, ["head", "head"], ersm_factory, channels={"head": 3})


def test_non_4d_output_is_a_clear_error(model):
    insert_after(model, "head", ersm_factory, channels={"head": 3})
    with pytest.raises(ValueError, match=r"needs a 4D \(B, C, H, W\) output .* but got \(2, 3\)"):
        model(torch.randn(2, 1, 64, 64))


def test_output_shapes_of_4d_outputs_only_and_mode_restored(model):
    model.train()
    shapes = output_shapes(model, ["backbone.layer1", "backbone.layer3", "head"],
                           torch.randn(2, 1, 64, 64))
    assert shapes == {"backbone.layer1": (2, 4, 32, 32), "backbone.layer3": (2, 8, 8, 8)}
    assert model.training
