import pytest
import torch
from torch import nn

from energymask import Classifier, FrozenBackboneClassifier, shallow_cnn, small_cnn
from energymask.models import ForwardFeatures, feature_extractor


def test_small_cnn_shapes():
    backbone = small_cnn(1, (4, 8, 16))
    assert [n for n, _ in backbone.named_children()] == ["layer1", "layer2", "layer3"]
    assert backbone(torch.randn(2, 1, 64, 64)).shape == (2, 16, 8, 8)
    assert backbone.out_channels == 16


def test_shallow_cnn_and_classifier():
    model = Classifier(shallow_cnn(3, (4, 8, 8)), 8, 5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_frozen_backbone_stays_in_eval_and_untrained():
    torch.manual_seed(0)
    backbone = small_cnn(1, (4, 4, 8))
    model = FrozenBackboneClassifier(backbone, 8, 3, bias_init=0.0)
    model.train()
    assert model.training and not model.backbone.training
    bn = model.backbone.layer1[1]
    stats = bn.running_mean.clone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 1, 64, 64)).sum() + model.ersm.pop_regularizer()
    loss.backward()
    opt.step()
    torch.testing.assert_close(bn.running_mean, stats)  # BatchNorm statistics do not drift
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert model.ersm.weight.grad is not None and model.head.weight.grad is not None
    assert all(p.grad is None for p in backbone.parameters())


def test_feature_extractor_layouts():
    class TimmLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward_features(self, x):
            return self.conv(x)

    class ResNetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.layer1 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
            self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

    x = torch.zeros(1, 3, 8, 8)
    timm_like = TimmLike()
    assert isinstance(feature_extractor(timm_like), ForwardFeatures)
    assert feature_extractor(timm_like)(x).shape == (1, 4, 6, 6)
    with_features = nn.Module()
    with_features.features = nn.Conv2d(3, 4, 3)
    assert feature_extractor(with_features) is with_features.features
    trunk = feature_extractor(ResNetLike())
    assert list(dict(trunk.named_children())) == ["conv1", "layer1"]
    with pytest.raises(TypeError, match="feature_extractor takes a timm model .* but got Linear"):
        feature_extractor(nn.Linear(2, 2))
