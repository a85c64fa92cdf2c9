"""Small CNNs for 64×64 inputs, the trunk of torchvision / timm classifiers, and the
frozen-backbone ERSM classifier.

The frozen-backbone protocol is the authors' (docs/design.md §3): a trained backbone,
frozen and kept in eval mode, then ERSM, global-average-pool and a linear head.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from energymask.ersm import EnergyMask2d


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    """conv3×3-BN-ReLU ×2, then a 2×2 max-pool: halves H and W."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)) -> nn.Sequential:
    """ResNet-style naming (``layer1``…) backbone: (B, in, 64, 64) -> (B, widths[-1], 8, 8).

    Each stage halves the resolution; the defaults train in minutes on 2 CPU cores.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    previous = in_channels
    for i, width in enumerate(widths, start=1):
        stages[f"layer{i}"] = conv_block(previous, width)
        previous = width
    backbone = nn.Sequential(stages)
    backbone.out_channels = previous
    return backbone


def shallow_cnn(in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)) -> nn.Sequential:
    """Three single-conv blocks (conv-BN-ReLU-pool), the "shallow CNN" of PB-EDropout."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    previous = in_channels
    for i, width in enumerate(widths, start=1):
        stages[f"layer{i}"] = nn.Sequential(
            nn.Conv2d(previous, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        previous = width
    backbone = nn.Sequential(stages)
    backbone.out_channels = previous
    return backbone


class ForwardFeatures(nn.Module):
    """``model.forward_features(x)`` as a module: the unpooled features of a timm model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def feature_extractor(model: nn.Module) -> nn.Module:
    """The convolutional trunk of a torchvision or timm classifier: (B, 3, H, W) -> (B, C, h, w).

    The backbone for :class:`FrozenBackboneClassifier`. timm models: their
    ``forward_features`` (:class:`ForwardFeatures`); torchvision models with a
    ``features`` trunk (ConvNeXt, EfficientNet, MobileNet, VGG, ...): ``model.features``;
    torchvision ResNets: every child before ``avgpool``. The modules are shared
    with ``model``, not copied.

    Raises:
        TypeError: a model of none of these layouts.
    """
    if callable(getattr(model, "forward_features", None)):
        return ForwardFeatures(model)
    if isinstance(getattr(model, "features", None), nn.Module):
        return model.features
    children = dict(model.named_children())
    if "avgpool" in children:
        names = list(children)
        return nn.Sequential(OrderedDict(
            (name, children[name]) for name in names[: names.index("avgpool")]))
    raise TypeError(
        f"feature_extractor takes a timm model (forward_features), a torchvision model with "
        f"`features`, or a ResNet-like model with `avgpool`, but got {type(model).__name__}"
    )


class Classifier(nn.Module):
    """backbone -> global average pool -> linear head. Input (B, in, H, W), output (B, classes)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.backbone(x)).flatten(1))


class FrozenBackboneClassifier(nn.Module):
    """The authors' protocol: frozen backbone (eval mode) -> ERSM -> GAP -> linear head.

    Args:
        backbone: trained feature extractor, (B, in, H, W) -> (B, C, h, w).
        num_features: C.
        num_classes: classes of the head.
        head: an existing head to start from (for example the baseline's). Default: new.
        **ersm_kwargs: passed to :class:`EnergyMask2d`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        head: nn.Linear | None = None,
        **ersm_kwargs,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.ersm = EnergyMask2d(num_features, **ersm_kwargs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head if head is not None else nn.Linear(num_features, num_classes)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FrozenBackboneClassifier:
        super().train(mode)
        self.backbone.eval()  # frozen BatchNorm statistics must not drift
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.ersm(self.backbone(x))).flatten(1))


__all__ = ["Classifier", "ForwardFeatures", "FrozenBackboneClassifier", "feature_extractor",
           "shallow_cnn", "small_cnn"]
