"""Backbones of the command line: small CNNs, torchvision and timm models, local weights."""

import pytest
import timm
import torch
import torchvision

from energymask.lightning_modules.app.backbones import build_backbone


@pytest.mark.parametrize("name, layer, channels", [
    ("small_cnn", "layer3", 64),
    ("torchvision:resnet18", "layer3", 512),
    ("torchvision:efficientnet_v2_s", "6", 1280),
    ("timm:resnet18", "layer3", 512),
    ("timm:convnext_atto", "stages.2", 320),
])
def test_backbones_map_images_to_feature_maps(name, layer, channels):
    in_channels = 1 if name == "small_cnn" else 3
    net, found = build_backbone(name, in_channels)
    assert found == channels and net.training
    assert layer in dict(net.named_modules())  # the documented layer names
    with torch.no_grad():
        out = net.eval()(torch.zeros(2, in_channels, 64, 64))
    assert out.shape[:2] == (2, channels) and out.dim() == 4


def test_backbone_name_errors():
    with pytest.raises(ValueError, match=r"--backbone must be small_cnn, shallow_cnn, "
                                         r"torchvision:NAME or timm:NAME .*but got 'resnet'"):
        build_backbone("resnet", 3)
    with pytest.raises(ValueError, match=r"torchvision has no model 'nope'"):
        build_backbone("torchvision:nope", 3)
    with pytest.raises(ValueError, match=r"timm has no model 'nope'"):
        build_backbone("timm:nope", 3)
    with pytest.raises(ValueError, match=r"takes 3-channel images, but the data have 1"):
        build_backbone("torchvision:resnet18", 1)
    with pytest.raises(ValueError, match=r"no feature extractor found"):
        build_backbone("torchvision:vit_b_16", 3)
    with pytest.raises(ValueError, match=r"--weights loads torchvision / timm weights, but "
                                         r"--backbone is 'small_cnn'"):
        build_backbone("small_cnn", 1, weights="w.pt")


@pytest.mark.parametrize("name, full", [
    ("torchvision:resnet18", lambda: torchvision.models.resnet18(weights=None)),
    ("torchvision:mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(weights=None)),
    ("timm:resnet18", lambda: timm.create_model("resnet18", pretrained=False)),
])
def test_local_weights_load_into_the_backbone(tmp_path, name, full):
    torch.manual_seed(1)
    published = full()  # as the library publishes it: with its own head
    torch.save(published.state_dict(), tmp_path / "w.pth")
    net, _ = build_backbone(name, 3, weights=tmp_path / "w.pth")
    mine = net.state_dict()
    prefix = "features." if "mobilenet" in name else ""
    for k, v in mine.items():
        assert torch.equal(v, published.state_dict()[prefix + k]), k
    torch.save({"state_dict": published.state_dict()}, tmp_path / "wrapped.pth")
    wrapped, _ = build_backbone(name, 3, weights=tmp_path / "wrapped.pth")
    assert all(torch.equal(v, wrapped.state_dict()[k]) for k, v in mine.items())


def test_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--weights: .*none.pth' does not exist"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    with pytest.raises(ValueError, match=r"--weights: .*bad.pth' is not a PyTorch state dict"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "bad.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth' is not a state dict \(a dict of tensors\)"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "list.pth")
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save({**state, "layer5.0.weight": torch.zeros(1)}, tmp_path / "more.pth")
    with pytest.raises(ValueError, match=r"more.pth' is not a state dict of timm:resnet18: it has "
                                         r"1 keys that the backbone lacks, for example layer5.0"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "more.pth")
    torch.save({**state, "fc.weight": torch.zeros(3, 512)}, tmp_path / "head.pth")
    build_backbone("timm:resnet18", 3, weights=tmp_path / "head.pth")  # another head: ignored
    del state["layer4.1.bn2.bias"]
    torch.save(state, tmp_path / "part.pth")
    with pytest.raises(ValueError, match=r"part.pth' is not a state dict of timm:resnet18: it "
                                         r"lacks 1 of its \d+ keys, for example layer4.1.bn2.bias"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "part.pth")
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape.pth' does not fit timm:resnet18: 1 tensors have "
                                         r"other shapes, for example conv1.weight \(1,\) instead "
                                         r"of \(64, 3, 7, 7\)"):
        build_backbone("timm:resnet18", 3, weights=tmp_path / "shape.pth")


@pytest.mark.parametrize("name, module", [("torchvision:resnet18", "torchvision.models"),
                                          ("timm:resnet18", "timm")])
def test_missing_library_names_the_extra(name, module, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, module, None)  # as if not installed
    with pytest.raises(ValueError, match=rf"--backbone {name} needs {module.split('.')[0]}, "
                                         r"which is not installed: pip install "
                                         r"'energymask\[backbones\]'"):
        build_backbone(name, 3)
