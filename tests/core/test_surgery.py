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
from energymask.surgery import last_spatial_block, output_shapes, trace_calls


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


class ReusesItsReLU(nn.Module):
    """Like torchvision's BasicBlock: one ReLU module called twice per forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


def test_module_called_twice_is_refused():
    model = nn.Sequential(ReusesItsReLU())
    x = torch.randn(1, 2, 4, 4)
    assert [name for name, _ in trace_calls(model, x)] == ["0.conv1", "0.relu", "0.conv2",
                                                           "0.relu", "0"]
    with pytest.raises(ValueError, match=r"'0.relu' runs 2 times per forward .* act 2 times; "
                                         r"insert after a block that runs once, for example its "
                                         r"parent '0'"):
        insert_after(model, "0.relu", ersm_factory, example_input=x)
    assert not inserted_layers(model)


def test_module_called_twice_is_refused_at_the_first_forward_without_example():
    model = nn.Sequential(ReusesItsReLU())
    insert_after(model, "0.relu", ersm_factory, channels={"0.relu": 2})
    with pytest.raises(ValueError, match=r"'0.relu' runs 2 times per forward"):
        model(torch.randn(1, 2, 4, 4))
    ok = nn.Sequential(ReusesItsReLU())
    insert_after(ok, "0.conv1", ersm_factory)
    ok(torch.randn(1, 2, 4, 4))
    block = ok[0]
    assert not block._forward_hooks and not block._forward_pre_hooks  # removed after one call
    assert not block.conv1._forward_hooks


def test_failing_call_leaves_the_model_unchanged(model):
    x = torch.randn(1, 1, 64, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    structure = repr(model)
    calls = []

    def factory(name, channels):
        calls.append(name)
        if name == "backbone.layer3":
            raise ValueError("bad settings")
        return ersm_factory(name, channels)

    failing = [
        (dict(names=["backbone.layer1", "backbone.layer9"]), ValueError, "unknown layer name"),
        (dict(names=["backbone.layer1", "head"], example_input=x), ValueError,
         r"'head' does not output a 4D .* \(got \(1, 3\)\)"),
        (dict(names=["backbone.layer1", "backbone.layer3"]), ValueError, "bad settings"),
        (dict(names=["backbone.layer1", "backbone.layer3.6"]), ValueError,
         "cannot tell the output channels of 'backbone.layer3.6'"),
        (dict(names=["backbone.layer1", 3]), TypeError, "names must be str"),
    ]
    for kwargs, error, match in failing:
        with pytest.raises(error, match=match):
            insert_after(model, factory=factory, **kwargs)
        assert repr(model) == structure and not inserted_layers(model)
        assert model.state_dict().keys() == state.keys()
    assert "backbone.layer1" in calls  # layers were built, then dropped


def test_example_input_gives_the_channels():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Identity())
    layers = insert_after(model, "1", ersm_factory, example_input=torch.randn(1, 1, 4, 4))
    assert layers["1"].channels == 3


def test_last_spatial_block(model):
    # small_cnn: backbone.layer3 is a Sequential ending in a MaxPool (no parameters)
    assert last_spatial_block(model, torch.randn(1, 1, 64, 64)) == "backbone.layer3"
    # at 8x8 layer3 pools 2x2 to 1x1: its last module with parameters before the pool
    assert last_spatial_block(model, torch.randn(1, 1, 8, 8)) == "backbone.layer3.4"
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)))
    assert last_spatial_block(seq, torch.randn(1, 1, 6, 6)) == "1.1"  # into the last child
    with pytest.raises(ValueError, match=r"no submodule of Sequential with parameters outputs a "
                                         r"\(B, C, H, W\) tensor with H \* W > 1"):
        last_spatial_block(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.randn(1, 1, 3, 3))
