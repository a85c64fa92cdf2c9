import pytest
import torch
from scipy.stats import rankdata as sp_rank
from scipy.stats import spearmanr

from energymask import FrozenBackboneClassifier, small_cnn
from energymask.attribution import attribution_maps, rankdata, spearman


def test_rankdata_matches_scipy_with_ties():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0, -1.0, 5.0]])
    for row in x:
        assert rankdata(row[None])[0].tolist() == sp_rank(row.numpy()).tolist()


def test_spearman_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 5, 5), generator=g).float()
    b = torch.randn(3, 5, 5, generator=g)
    got = spearman(a, b)
    for i in range(3):
        want = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-9)
    assert spearman(b, b).tolist() == pytest.approx([1.0] * 3)


def _model():
    torch.manual_seed(0)
    return FrozenBackboneClassifier(small_cnn(1, (4, 8, 8)), 8, 3, bias_init=-1.0).eval()


def test_attribution_maps_shapes_and_values():
    model = _model()
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([0, 2])
    out = attribution_maps(model, x, t, window=8)
    assert out["keep"].shape == (2, 4, 4)
    assert out["maps"]["occlusion"].shape == (2, 32, 32)
    assert out["maps"]["gradcam"].shape == (2, 32, 32)
    assert out["grid_maps"]["occlusion"].shape == (2, 4, 4)
    torch.testing.assert_close(out["keep"], model.ersm.last_keep)
    # occlusion map at a pixel covered by one window equals the logit drop / window size
    with torch.no_grad():
        base = model(x)[torch.arange(2), t]
        xo = x.clone()
        xo[:, :, :8, :8] = 0
        drop = base - model(xo)[torch.arange(2), t]
    torch.testing.assert_close(out["maps"]["occlusion"][:, 0, 0], drop, rtol=1e-4, atol=1e-6)
    for v in out["spearman"].values():
        assert v.shape == (2,) and (v.abs() <= 1 + 1e-6).all()


def test_errors():
    model = _model()
    with pytest.raises(ValueError, match="images must have shape"):
        attribution_maps(model, torch.zeros(1, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="window must be an int"):
        attribution_maps(model, torch.zeros(1, 1, 32, 32), torch.tensor([0]), window=64)


def test_empty_batch_gives_empty_maps():
    out = attribution_maps(_model(), torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long))
    assert out["keep"].shape == (0, 4, 4)
    assert out["maps"]["occlusion"].shape == (0, 32, 32)
    assert out["grid_maps"]["gradcam"].shape == (0, 4, 4)
    assert out["spearman"]["occlusion"].shape == (0,)


def test_targets_must_match_the_batch():
    with pytest.raises(ValueError, match=r"targets must have shape \(B,\) = \(2,\)"):
        attribution_maps(_model(), torch.zeros(2, 1, 32, 32), torch.tensor([0]))
