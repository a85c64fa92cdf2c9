"""The callbacks and FrozenBackboneERSM on real torchvision and timm backbones.

Models are built with ``weights=None`` / ``pretrained=False`` (nothing is
downloaded) and run at tiny inputs, batch 2, one Trainer step each: the point
is that the layer names, insertion, logging, checkpointing and reloading work
on the networks users train, not what they learn. Where to put the layers
(names relative to the model; prefix your LightningModule's attribute, e.g.
``net.layer3``), with the output stride of each:

=========================  ==============================  ===========================
family                     ERSM (deep, stride 16-32)       PB-EDropout (mid, stride 8-16)
=========================  ==============================  ===========================
torchvision ResNet-18/50   ``layer3`` (/16), ``layer4``    ``layer2`` (/8)
torchvision ConvNeXt       ``features.5`` (/16)            ``features.3`` (/8)
torchvision EfficientNet   ``features.6`` (/32)            ``features.4`` (/16)
timm ResNet                ``layer3`` (/16)                ``layer2`` (/8)
timm ConvNeXt              ``stages.2`` (/16)              ``stages.1`` (/8)
=========================  ==============================  ===========================
"""

from __future__ import annotations

import time

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask.ersm import EnergyMask2d, collect_regularizer
from energymask.lightning_modules import (
    ERSMCallback,
    FrozenBackboneERSM,
    PBEDropoutCallback,
    load_for_inference,
)
from energymask.masked_residual import masked_residual
from energymask.models import feature_extractor
from energymask.sparse import sparsify
from energymask.surgery import insert_after, last_spatial_block

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
torch.set_num_threads(1)

NUM_CLASSES = 3
# name: (input size, ERSM layer, PB-EDropout layer); the grids are >= 2x2 at that size
BACKBONES = {
    "torchvision:resnet18": (64, None, "layer2"),  # layers=None picks layer4.1
    "torchvision:resnet50": (32, "layer3", "layer2"),
    "torchvision:convnext_tiny": (32, "features.5", "features.3"),
    "torchvision:efficientnet_v2_s": (64, "features.6", "features.4"),
    "timm:resnet18": (32, "layer3", "layer2"),
    "timm:convnext_atto": (32, "stages.2", "stages.1"),
}


def build(name: str) -> nn.Module:
    library, arch = name.split(":")
    torch.manual_seed(0)
    if library == "timm":
        return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)
    # zero_init_residual: an untrained ResNet-50's eval-mode activations overflow after one
    # step (BatchNorm running statistics of one batch of 2); zeroed residual branches do not
    extra = {"zero_init_residual": True} if arch.startswith("resnet") else {}
    return getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES, **extra)


class UserNet(L.LightningModule):
    """A user's own module around a backbone: nothing energymask-specific in it."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build(name)
        self.example_input_array = torch.zeros(1, 3, size, size)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # no optimiser state: small checkpoints
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def one_step(module, size, tmp_path, callbacks=()):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=g)
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1,
                        callbacks=list(callbacks), default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return trainer, trainer.checkpoint_callback.best_model_path, x


def same_logits(module, loaded, x):
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_callbacks_on_a_real_backbone(name, tmp_path):
    start = time.perf_counter()
    size, ersm_at, pbed_at = BACKBONES[name]
    L.seed_everything(0)
    module = UserNet(name, size)
    ersm = ERSMCallback(None if ersm_at is None else f"net.{ersm_at}", bias_init=0.0)
    pbed = PBEDropoutCallback(f"net.{pbed_at}", p=0.2, patch_size=2, population=4,
                              generations=1, sweeps=1)
    trainer, ckpt, x = one_step(module, size, tmp_path, [ersm, pbed])
    ersm_name = list(ersm.layers)[0]
    assert ersm_name == f"net.{ersm_at or 'layer4.1'}"
    for key in ("train_loss", f"ersm/{ersm_name}/keep_ratio",
                f"pbedropout/net.{pbed_at}/drop_rate"):
        assert key in trainer.logged_metrics, key
    loaded = load_for_inference(ckpt, UserNet)
    assert ersm_name in {n for n, m in loaded.named_modules() if hasattr(m, "block")}
    same_logits(module, loaded, x)
    print(f"{name}: callbacks {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_frozen_backbone_ersm_on_a_real_backbone(name, tmp_path):
    start = time.perf_counter()
    size = BACKBONES[name][0]
    L.seed_everything(0)
    backbone = feature_extractor(build(name))
    with torch.no_grad():
        num_features = backbone.eval()(torch.zeros(1, 3, size, size)).shape[1]
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    module = FrozenBackboneERSM(backbone, num_features, NUM_CLASSES, bias_init=0.0)
    trainer, ckpt, x = one_step(module, size, tmp_path)
    assert "train_reg" in trainer.logged_metrics
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)  # BN statistics too
    loaded = load_for_inference(ckpt, FrozenBackboneERSM,
                                backbone=feature_extractor(build(name)))
    same_logits(module, loaded, x)
    print(f"{name}: frozen backbone {time.perf_counter() - start:.1f} s")


def test_layers_none_on_a_resnet_is_the_last_spatial_block_not_avgpool():
    model = build("torchvision:resnet18")
    assert last_spatial_block(model, torch.zeros(1, 3, 64, 64)) == "layer4.1"  # 2x2
    assert last_spatial_block(model, torch.zeros(1, 3, 32, 32)) == "layer3.1"  # layer4 is 1x1


def test_the_reused_relu_of_a_basic_block_is_refused():
    model = build("torchvision:resnet18")
    with pytest.raises(ValueError, match=r"'layer1.0.relu' runs 2 times per forward .* its "
                                         r"parent 'layer1.0'"):
        insert_after(model, "layer1.0.relu", lambda _n, c: nn.Identity(),
                     example_input=torch.zeros(1, 3, 32, 32))


class MaskedResidualNet(UserNet):
    """The user's module, with ours: a hard ERSM layer after ``layer1`` and every residual
    block after it masked (``masked_residual``), so training executes what ``sparsify`` runs."""

    def __init__(self, name: str, size: int, block_gradient: bool = False) -> None:
        super().__init__(name, size)
        self.save_hyperparameters()
        (self.ersm,) = insert_after(
            self.net, "layer1",
            lambda _, c: EnergyMask2d(c, gate="hard", bias_init=0.0, temperature=0.1)).values()
        masked_residual(self.net, "layer1", block_gradient=block_gradient)

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + collect_regularizer(self)


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:resnet18"])
@pytest.mark.parametrize("block_gradient", [False, True])
def test_masked_residual_trains_reloads_and_runs_sparse_on_a_real_backbone(
        name, block_gradient, tmp_path):
    size = BACKBONES[name][0]
    L.seed_everything(0)
    module = MaskedResidualNet(name, size, block_gradient)
    layer = module.ersm
    before = layer.weight.detach().clone()
    trainer, ckpt, x = one_step(module, size, tmp_path)
    assert not torch.equal(layer.weight, before)  # the mask learned in the Trainer's step
    assert layer.executed_keep is not None or not block_gradient
    loaded = load_for_inference(ckpt, MaskedResidualNet)
    assert loaded.hparams.block_gradient is block_gradient
    same_logits(module, loaded, x)
    with torch.no_grad():
        sparse = sparsify(loaded.net, warn=False).eval()
        torch.testing.assert_close(sparse(x), loaded(x), rtol=0, atol=1e-5)
