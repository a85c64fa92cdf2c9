import warnings
from contextlib import contextmanager

import lightning.pytorch as L
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask import EnergyMask2d, FrozenBackboneClassifier, insert_after, small_cnn
from energymask.deletion import deletion_curve, find_ersm_layer, insertion_curve
from energymask.evaluation import ORDERINGS, accuracy
from energymask.models import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=12, size=32, seed=0, channels=1, batch_size=5, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if labels is None else labels(x)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _clean_labels(model):
    """Labels = the model's clean predictions, so curves start high and decay."""

    def labels(x):
        with torch.no_grad():
            return model.eval()(x).argmax(-1)

    return labels


def _sharp_head(m):
    # no bias, large weights: predictions follow the kept tokens, so curves are not flat
    with torch.no_grad():
        m.head.bias.zero_()
        m.head.weight.mul_(10)
    return m.eval()


def _frozen(seed=0):
    torch.manual_seed(seed)
    # signed features (no ReLU), 32x32 -> 4x4 tokens
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.AvgPool2d(8))
    return _sharp_head(FrozenBackboneClassifier(backbone, 8, 3, bias_init=-1.0))


def _inside(seed=0):
    torch.manual_seed(seed)
    m = Classifier(small_cnn(1, (4, 8, 8)), 8, 3)
    insert_after(m, ["backbone.layer2"], lambda n, c: EnergyMask2d(c, bias_init=-1.0,
                                                                     token_size=2))
    return _sharp_head(m)


def _resnet18(after="layer3.0", channels=None):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=4)
    insert_after(m, [after], lambda n, c: EnergyMask2d(c, bias_init=0.0), channels=channels)
    return m.eval()


def _convnext():
    torch.manual_seed(0)
    m = timm.create_model("convnext_atto", pretrained=False, num_classes=4)
    insert_after(m, ["stages.2.blocks.0"], lambda n, c: EnergyMask2d(c, bias_init=0.0),
                 channels={"stages.2.blocks.0": 160})
    return m.eval()


class RootForward(nn.Module):
    """A root forward that does more than call its children: it normalises the
    input, adds a skip tensor computed before the ERSM layer after it, and
    reshapes with a batch size read before the layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.ersm = EnergyMask2d(8, bias_init=-1.0, token_size=4)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x, scale: float = 2.0):
        x = (x - x.mean((2, 3), keepdim=True)) * scale
        f = self.stem(x)  # signed features: deletions can flip the prediction
        skip = f.flip(-1)
        g = self.conv(self.ersm(f)) + 0.1 * skip
        b = x.shape[0]
        return self.head(g.reshape(b, 8, -1).mean(-1))


class Lit(L.LightningModule):
    """The user's path: a LightningModule around a torchvision ResNet."""

    def __init__(self):
        super().__init__()
        self.model = _resnet18()

    def forward(self, x):
        return self.model(x)


def _fast_equals_naive(model, dl, orderings=ORDERINGS, **kw):
    with _no_fallback():
        fast = deletion_curve(model, dl, orderings=orderings, steps_per_forward=3, **kw)
    naive = deletion_curve(model, dl, orderings=orderings, method="naive", **kw)
    assert fast.settings["method"] == "fast" and naive.settings["method"] == "naive"
    assert fast.curves == naive.curves
    assert set(fast.curves) == set(orderings)
    # informative curves, so the equality can fail
    assert any(len(set(c)) >= 2 for c in fast.curves.values())
    return fast


@contextmanager
def _no_fallback():
    """The fallback warning is an error inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cannot split")
        yield


@pytest.mark.parametrize("make", [_frozen, _inside])
def test_fast_equals_naive_small_models(make):
    _fast_equals_naive(make(), _data(), steps=5)


def test_fast_equals_naive_resnet18_inside_layer3():
    model = _resnet18()
    dl = _data(4, 64, channels=3, batch_size=4, labels=_clean_labels(model))
    r = _fast_equals_naive(model, dl, steps=5)
    assert r.num_tokens == 16


def test_fast_equals_naive_resnet18_residual_around_the_layer():
    # after layer3.0.bn2 the block adds its identity (computed before the cut) after ERSM
    model = _resnet18("layer3.0.bn2")
    dl = _data(4, 64, channels=3, batch_size=4, labels=_clean_labels(model))
    _fast_equals_naive(model, dl, steps=5)


def test_fast_equals_naive_timm_convnext():
    model = _convnext()
    dl = _data(4, 64, channels=3, batch_size=4, labels=_clean_labels(model))
    _fast_equals_naive(model, dl, steps=5)


def test_fast_equals_naive_root_forward_with_skip():
    torch.manual_seed(0)
    model = _sharp_head(RootForward())
    _fast_equals_naive(model, _data(6, 16, batch_size=4))


def test_fast_equals_naive_lightning_module():
    model = Lit().eval()
    dl = _data(4, 64, channels=3, batch_size=4, labels=_clean_labels(model))
    _fast_equals_naive(model, dl, orderings=("energy", "random", "gradcam"), steps=5)


class Branching(RootForward):
    def forward(self, x):
        f = self.ersm(self.stem(x))
        if f.sum() > 0:  # data-dependent control flow: no graph
            f = -f
        return self.head(f.mean((2, 3)))


class Twice(RootForward):
    def forward(self, x):
        return self.head(self.ersm(self.ersm(self.stem(x))).mean((2, 3)))


class Mixing(RootForward):
    def forward(self, x):
        g = self.ersm(self.stem(x)).mean((2, 3))
        return self.head(g - g.mean(0, keepdim=True))  # the batch mean mixes the samples


def _hooked():
    torch.manual_seed(0)
    m = _inside()
    m.backbone.register_forward_hook(lambda _m, _i, out: out * 2)
    return m


@pytest.mark.parametrize("make, why", [
    (lambda: Branching(), "cannot trace"),
    (lambda: Twice(), "called 2 times"),
    (lambda: Mixing(), "mixes the samples"),
    (_hooked, "forward hooks"),
])
def test_unsplittable_models_fall_back_with_the_reason(make, why):
    torch.manual_seed(0)
    model = make().eval()
    size = 32 if make is _hooked else 16
    dl = _data(4, size, batch_size=4)
    with pytest.warns(UserWarning, match=f"cannot split the model at .*{why}"):
        r = deletion_curve(model, dl, orderings=("energy", "random"), steps=3)
    assert r.settings["method"] == "naive"
    naive = deletion_curve(model, dl, orderings=("energy", "random"), steps=3, method="naive")
    assert r.curves == naive.curves


def test_soft_protocol_starts_at_clean_accuracy():
    model = _frozen()
    with torch.no_grad():  # a keep map far from uniform: the two protocols differ
        model.ersm.weight.mul_(20)
    dl = _data()
    kw = dict(orderings=("energy", "random"), steps=[0, 8, 16])
    with _no_fallback():
        soft = deletion_curve(model, dl, protocol="soft", **kw)
    binary = deletion_curve(model, dl, **kw)
    naive = deletion_curve(model, dl, protocol="soft", method="naive", **kw)
    clean = accuracy(model, dl)
    assert soft.protocol == "soft" and binary.protocol == "binary"
    assert soft.to_dict()["protocol"] == "soft"
    assert soft.curves == naive.curves
    for curve in soft.curves.values():
        assert curve[0] == clean
    assert soft.curves != binary.curves


def test_insertion_fast_equals_naive():
    model = _frozen()
    dl = _data()
    a = insertion_curve(model, dl, orderings=("energy", "magnitude"), steps=5)
    b = insertion_curve(model, dl, orderings=("energy", "magnitude"), steps=5, method="naive")
    assert a.curves == b.curves and a.mode == "insertion"


def test_steps_per_forward_does_not_change_results():
    model = _inside()
    dl = _data()
    kw = dict(orderings=("energy", "random"), steps=[0, 3, 5, 9, 16])
    ref = deletion_curve(model, dl, steps_per_forward=1, **kw)
    for spf in (2, 100):
        r = deletion_curve(model, dl, steps_per_forward=spf, **kw)
        assert r.curves == ref.curves


class OneToken(nn.Module):
    """Head reads only token (0, 0) of the ERSM output: class 1 if it is kept (non-zero)."""

    def __init__(self):
        super().__init__()
        self.ersm = EnergyMask2d(1, bias_init=-20.0)

    def forward(self, x):
        t = self.ersm(x)[:, 0, 0, 0]
        return torch.stack([torch.zeros_like(t), t], 1)


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_one_token_head_gives_expected_curve(method):
    model = OneToken().eval()
    x = torch.ones(4, 1, 2, 2)
    x[:, :, 0, 0] = 5.0  # largest token: deleted last by magnitude
    y = torch.ones(4, dtype=torch.long)
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    r = deletion_curve(model, dl, orderings=("magnitude",), method=method)
    assert r.settings["method"] == method
    assert r.curves["magnitude"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert r.auc["magnitude"] == pytest.approx(0.75 + 0.125)
    assert r.fractions == [0, 0.25, 0.5, 0.75, 1.0]
    # user ordering: token (0, 0) least important -> deleted first
    scores = torch.arange(4.0).view(1, 2, 2).expand(4, 2, 2)
    r = deletion_curve(model, dl, orderings={"mine": scores}, method=method)
    assert r.curves["mine"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    r = deletion_curve(model, dl, orderings=[lambda f, z: -f[:, 0]], method=method)
    assert r.curves["custom0"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    # FeatureAblation: only token (0, 0) matters
    r = deletion_curve(model, dl, orderings=("feature_ablation",), perturbations_per_eval=4,
                       method=method)
    assert r.curves["feature_ablation"] == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_modes_restored_and_mask_cleared():
    model = _frozen().train()
    with pytest.warns(UserWarning, match="train mode"):
        deletion_curve(model, _data(), orderings=("random",), steps=3)
    assert model.training and model.ersm.forced_mask is None


def test_empty_batches_are_skipped():
    model = _frozen()
    dl = _data()
    batches = list(dl)
    empty = (batches[0][0][:0], batches[0][1][:0])
    kw = dict(orderings=("energy", "random"), steps=3)
    ref = deletion_curve(model, batches, **kw)
    # the random ordering seeds batch i with seed + i: keep the indices of non-empty batches
    with_empty = deletion_curve(model, [*batches, empty], **kw)
    assert with_empty.curves == ref.curves and with_empty.num_samples == ref.num_samples
    with pytest.raises(ValueError, match="yielded 2 batches, all empty"):
        deletion_curve(model, [empty, empty], **kw)


def test_find_ersm_layer():
    model = _frozen()
    assert find_ersm_layer(model) == ("ersm", model.ersm)
    insert_after(model, ["backbone.0"], lambda n, c: EnergyMask2d(c))
    with pytest.raises(ValueError, match="several EnergyMask2d layers, name one"):
        find_ersm_layer(model)
    with pytest.raises(ValueError, match="layer must be one of the EnergyMask2d layers"):
        find_ersm_layer(model, "head")


def test_errors():
    model = _frozen()
    dl = _data()
    with pytest.raises(ValueError, match="no EnergyMask2d layer; its layers are"):
        deletion_curve(Classifier(small_cnn(1, (4, 8, 8)), 8, 3), dl)
    with pytest.raises(ValueError, match="dataloader is empty"):
        deletion_curve(model, [], orderings=("random",))
    with pytest.raises(ValueError, match="labels"):
        deletion_curve(model, [torch.randn(2, 1, 32, 32)], orderings=("random",))
    with pytest.raises(ValueError, match=r"steps must lie in \[0, N\]"):
        deletion_curve(model, dl, orderings=("random",), steps=[0, 17])
    with pytest.raises(ValueError, match="steps as an int must be >= 2"):
        deletion_curve(model, dl, orderings=("random",), steps=1)
    with pytest.raises(ValueError, match="unknown ordering 'bogus'; valid names"):
        deletion_curve(model, dl, orderings=("bogus",))
    with pytest.raises(ValueError, match=r"method must be one of \['fast', 'naive'\]"):
        deletion_curve(model, dl, method="slow")
    with pytest.raises(ValueError, match=r"mode must be one of \['deletion', 'insertion'\]"):
        deletion_curve(model, dl, mode="both")
    with pytest.raises(ValueError, match=r"protocol must be one of \['binary', 'soft'\]"):
        deletion_curve(model, dl, protocol="hard")
    with pytest.raises(ValueError, match="steps_per_forward must be a positive int, but got 0"):
        deletion_curve(model, dl, steps_per_forward=0)
    with pytest.raises(ValueError, match="perturbations_per_eval must be a positive int"):
        deletion_curve(model, dl, perturbations_per_eval=True)


def test_result_serialises():
    r = deletion_curve(_frozen(), _data(), orderings=("energy", "random"), steps=4)
    d = r.to_dict()
    assert d["steps"] == [0, 5, 11, 16] and set(d["auc"]) == {"energy", "random"}
    assert d["protocol"] == "binary" and d["settings"]["protocol"] == "binary"
    assert '"curves"' in r.to_json()
    assert all(0.0 <= v <= 1.0 for v in r.auc.values())


def test_batches_go_to_the_models_device(device_stem):
    # naive path: the fast path's split check (energymask/split.py) forces masks on the
    # input's device, right for a model on one device, not for this two-device stand-in
    method = "naive"
    results = {}
    for device in ("meta", "cpu"):
        stem = device_stem(device)
        model = nn.Sequential(stem, _inside()).eval()
        results[device] = deletion_curve(model, _data(), orderings=("energy", "random"),
                                         steps=3, method=method)
        assert stem.seen == {device}  # CPU batches moved to the model's device
    assert results["meta"].curves == results["cpu"].curves


def test_sparse_steps_equal_the_dense_masked_residual_model():
    # ERSM inside layer3: layer3.1 and layer4 compute only at kept tokens (docs/design.md §11)
    import copy

    from energymask.masked_residual import masked_residual

    model = _resnet18()
    old = model.layer3[0].layer  # binary in eval: the masked model's clean pass
    model.layer3[0].layer = EnergyMask2d(old.channels, old.settings, hard_inference=True).eval()
    model.layer3[0].layer.load_state_dict(old.state_dict())
    dl = _data(4, 64, channels=3, batch_size=4, labels=_clean_labels(model))
    orderings = ("energy", "magnitude", "random")  # Captum's are scored on `model` itself
    sparse = deletion_curve(model, dl, orderings=orderings, steps=5, sparse=True)
    dense = masked_residual(copy.deepcopy(model), "layer3.0.layer")
    reference = deletion_curve(dense, dl, orderings=orderings, steps=5, method="naive")
    assert sparse.settings["method"] == "sparse"
    assert sparse.curves == reference.curves
    assert any(len(set(c)) >= 2 for c in sparse.curves.values())
    with pytest.raises(ValueError, match="sparse=True needs protocol='binary'"):
        deletion_curve(model, dl, sparse=True, protocol="soft")
    with pytest.raises(ValueError, match="no residual block"):
        deletion_curve(_resnet18("layer4"), dl, sparse=True)
