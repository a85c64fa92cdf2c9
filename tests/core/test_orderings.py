import pytest
import torch
import torch.nn.functional as F

from energymask import FrozenBackboneClassifier, small_cnn
from energymask.orderings import (
    check_orderings,
    compute_scores,
    feature_ablation_scores,
    gradcam_scores,
    magnitude_scores,
    random_scores,
    token_feature_mask,
)


def _model():
    torch.manual_seed(0)
    return FrozenBackboneClassifier(small_cnn(1, (4, 8, 8)), 8, 3, bias_init=-1.0).eval()


def _suffix(m):
    return lambda f: m.head(m.pool(m.ersm(f)).flatten(1))


def test_feature_ablation_matches_manual_token_zeroing():
    m = _model()
    f = torch.randn(2, 8, 4, 4)
    y = torch.tensor([0, 2])
    s = _suffix(m)
    got = feature_ablation_scores(s, f, y, token_size=2, perturbations_per_eval=3)
    with torch.no_grad():
        base = s(f)[torch.arange(2), y]
        want = torch.zeros(2, 2, 2)
        for r in range(2):
            for c in range(2):
                g = f.clone()
                g[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 0
                want[:, r, c] = base - s(g)[torch.arange(2), y]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradcam_matches_manual_grad_times_activation():
    m = _model()
    x = torch.randn(2, 1, 32, 32)
    y = torch.tensor([1, 0])
    got = gradcam_scores(m, m.ersm, x, y, token_size=2)
    with torch.no_grad():
        feats = m.backbone(x)
    feats.requires_grad_(True)
    out = _suffix(m)(feats)[torch.arange(2), y].sum()
    (grad,) = torch.autograd.grad(out, feats)
    cam = (grad.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True)
    want = F.avg_pool2d(cam.detach(), 2)[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_magnitude_and_random_and_mask():
    f = torch.zeros(1, 2, 2, 2)
    f[0, :, 1, 1] = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(magnitude_scores(f, 1), torch.tensor([[[0.0, 0.0], [0.0, 5.0]]]))
    torch.testing.assert_close(magnitude_scores(f, 2), torch.tensor([[[5.0]]]))
    assert torch.equal(random_scores((2, 3, 3), 1), random_scores((2, 3, 3), 1))
    assert not torch.equal(random_scores((2, 3, 3), 1), random_scores((2, 3, 3), 2))
    ids = token_feature_mask(4, 4, 2)
    assert ids[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_check_orderings():
    scores = torch.zeros(1, 2, 2)
    named = check_orderings(("energy", scores))
    assert list(named) == ["energy", "custom1"]
    assert list(check_orderings("random")) == ["random"]
    with pytest.raises(ValueError, match="unknown ordering 'x'; valid names are"):
        check_orderings(["x"])
    with pytest.raises(ValueError, match="at least one ordering"):
        check_orderings(())
    with pytest.raises(TypeError, match="must be a name, callable or tensor"):
        check_orderings({"a": 3})


def test_compute_scores_checks_shape():
    with pytest.raises(ValueError, match=r"shape \(B, h, w\)"):
        compute_scores(
            torch.zeros(1, 3, 3), features=torch.zeros(1, 1, 2, 2), logits=torch.zeros(1, 2, 2),
            token_size=1, seed=0, layer=None, y=None, forward=None, inputs=None, suffix=None,
        )


def test_random_scores_seeded_per_image_do_not_depend_on_the_batch():
    seeds = torch.tensor([5, 7, 9])
    batch = random_scores((3, 2, 4), seeds)
    for b, s in enumerate(seeds.tolist()):  # image b alone, from its own seed
        assert torch.equal(batch[b : b + 1], random_scores((1, 2, 4), s))
    assert torch.equal(random_scores((2, 2, 4), seeds[1:]), batch[1:])
    assert random_scores((0, 2, 4), torch.tensor([], dtype=torch.long)).shape == (0, 2, 4)
