import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask import EnergyMask2d, FrozenBackboneClassifier, insert_after, small_cnn
from energymask.deletion import auc, deletion_curve, insertion_curve, split_suffix
from energymask.models import Classifier

ALL = ("energy", "magnitude", "random", "gradcam", "feature_ablation")


def _data(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=5)


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
    insert_after(m, ["backbone.layer2"], lambda n, c: EnergyMask2d(c, bias_init=-1.0))
    return _sharp_head(m)


@pytest.mark.parametrize("make", [_frozen, _inside])
def test_fast_equals_naive_every_ordering(make):
    model = make()
    dl = _data()
    fast = deletion_curve(model, dl, orderings=ALL, method="fast", steps_per_forward=7)
    naive = deletion_curve(model, dl, orderings=ALL, method="naive")
    assert fast.curves == naive.curves
    assert fast.settings["method"] == "fast"
    assert len(fast.steps) == fast.num_tokens + 1
    assert set(fast.curves) == set(ALL)
    for curve in fast.curves.values():  # informative curves, so the equality can fail
        assert len(set(curve)) >= 3


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


def test_auc_hand_computed():
    assert auc([0, 0.5, 1], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert auc([0, 0.25, 1], [1.0, 1.0, 0.0]) == pytest.approx(0.25 + 0.375)


class OneToken(nn.Module):
    """Head reads only token (0, 0) of the ERSM output: class 1 if it is kept (non-zero)."""

    def __init__(self):
        super().__init__()
        self.ersm = EnergyMask2d(1, bias_init=-20.0)

    def forward(self, x):
        t = self.ersm(x)[:, 0, 0, 0]
        return torch.stack([torch.zeros_like(t), t], 1)


def test_one_token_head_gives_expected_curve():
    model = OneToken().eval()
    x = torch.ones(4, 1, 2, 2)
    x[:, :, 0, 0] = 5.0  # largest token: deleted last by magnitude
    y = torch.ones(4, dtype=torch.long)
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    # naive path (custom forward cannot be split) warns and falls back
    with pytest.warns(UserWarning, match="cannot split"):
        r = deletion_curve(model, dl, orderings=("magnitude",))
    assert r.curves["magnitude"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert r.auc["magnitude"] == pytest.approx(0.75 + 0.125)
    assert r.fractions == [0, 0.25, 0.5, 0.75, 1.0]
    # user ordering: token (0, 0) least important -> deleted first
    scores = torch.arange(4.0).view(1, 2, 2).expand(4, 2, 2)
    with pytest.warns(UserWarning):
        r = deletion_curve(model, dl, orderings={"mine": scores})
    assert r.curves["mine"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.warns(UserWarning):
        r = deletion_curve(model, dl, orderings=[lambda f, z: -f[:, 0]])
    assert r.curves["custom0"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    # FeatureAblation through the generic (hook) suffix: only token (0, 0) matters
    with pytest.warns(UserWarning):
        r = deletion_curve(model, dl, orderings=("feature_ablation",), perturbations_per_eval=4)
    assert r.curves["feature_ablation"] == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_split_suffix_matches_model():
    for model in (_frozen(), _inside()):
        x = torch.randn(2, 1, 32, 32)
        captured = []
        name, layer = next(iter(
            {n: m for n, m in model.named_modules() if isinstance(m, EnergyMask2d)}.items()
        ))
        h = layer.register_forward_pre_hook(lambda _m, a, c=captured: c.append(a[0]))
        with torch.no_grad():
            out = model(x)
            h.remove()
            assert torch.equal(split_suffix(model, name, layer)(captured[0]), out)


def test_modes_restored_and_mask_cleared():
    model = _frozen().train()
    with pytest.warns(UserWarning, match="train mode"):
        deletion_curve(model, _data(), orderings=("random",), steps=3)
    assert model.training and model.ersm.forced_mask is None


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
    with pytest.raises(ValueError, match="unknown ordering 'bogus'; valid names"):
        deletion_curve(model, dl, orderings=("bogus",))
    with pytest.raises(ValueError, match="method must be"):
        deletion_curve(model, dl, method="slow")
    with pytest.raises(ValueError, match="steps_per_forward"):
        deletion_curve(model, dl, steps_per_forward=0)


def test_result_serialises():
    r = deletion_curve(_frozen(), _data(), orderings=("energy", "random"), steps=4)
    d = r.to_dict()
    assert d["steps"] == [0, 5, 11, 16] and set(d["auc"]) == {"energy", "random"}
    assert '"curves"' in r.to_json()
    assert all(0.0 <= v <= 1.0 for v in r.auc.values())
