import pytest
import torch
from torch import nn

from energymask import EnergyMask2d
from energymask.ersm import forcing
from energymask.split import CannotSplit, split_at


class Net(nn.Module):
    """A skip tensor and a batch size cross the cut; a parameter is read after it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.ersm = EnergyMask2d(4, bias_init=0.0, token_size=2)
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        f = self.stem(x)
        g = self.ersm(f) * self.scale + f.flip(-1)
        return self.head(g.reshape(x.shape[0], 4, -1).mean(-1))


def _net():
    torch.manual_seed(0)
    return Net().eval()


@torch.no_grad()
def test_prefix_and_suffix_reproduce_the_model():
    model = _net()
    x = torch.randn(3, 1, 8, 8)
    split = split_at(model, model.ersm, x)
    cut = split.prefix(x)
    assert torch.equal(split.features(cut), model.stem(x))
    assert torch.equal(split.suffix(cut), model(x))
    masks = (torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    with forcing(model.ersm, masks.reshape(6, 4, 4)):
        stacked = split.suffix(cut, repeat=2)
    for j in range(2):
        with forcing(model.ersm, masks[j]):
            torch.testing.assert_close(stacked[3 * j : 3 * j + 3], model(x))
    # features replace the layer's input only, or every reader of it
    f = torch.zeros_like(split.features(cut))
    only_layer = split.suffix(cut, f)
    everywhere = split.suffix(cut, f, through_input=True)
    skip = model.stem(x).flip(-1)
    assert torch.allclose(only_layer, model.head(skip.reshape(3, 4, -1).mean(-1)))
    assert torch.allclose(everywhere, model.head.bias.expand(3, 3))


class NoBatch(Net):
    def forward(self, x):
        f = self.stem(x)
        return self.head(self.ersm(f).mean((2, 3)) + f.mean())  # f.mean() has no batch


class Unused(Net):
    def forward(self, x):
        self.ersm(self.stem(x))
        return self.head(self.stem(x).mean((2, 3)))


class TupleOut(Net):
    def forward(self, x):
        return self.head(self.ersm(self.stem(x)).mean((2, 3))), x


@pytest.mark.parametrize("cls, why", [
    (NoBatch, r"crosses the cut without the batch dimension \(3\)"),
    (Unused, "output does not depend on the layer"),
    (TupleOut, "output is a tuple, not a tensor"),
])
@torch.no_grad()
def test_refusals_name_the_reason(cls, why):
    torch.manual_seed(0)
    model = cls().eval()
    with pytest.raises(CannotSplit, match=why):
        split_at(model, model.ersm, torch.randn(3, 1, 8, 8))


def test_pbedropout_and_dropblock_in_the_model_do_not_stop_the_split():
    from energymask import (
        Classifier,
        DropBlock2d,
        EnergyMask2d,
        PBEDropout2d,
        insert_after,
        small_cnn,
    )

    torch.manual_seed(0)
    model = Classifier(small_cnn(1, (8, 16, 16)), 16, 10)
    insert_after(model, "backbone.layer1", lambda n, c: PBEDropout2d(c, p=0.1, patch_size=4))
    insert_after(model, "backbone.layer2", lambda n, c: EnergyMask2d(c, bias_init=0.0))
    insert_after(model, "backbone.layer3", lambda n, c: DropBlock2d(0.1, block_size=3))
    x = torch.randn(3, 1, 32, 32)
    model.eval()(x)  # the one-shot insertion checks run on the first forward
    split = split_at(model, model.backbone.layer2.layer, x)
    assert torch.equal(split.suffix(split.prefix(x)), model(x))
