import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from energymask import Classifier, small_cnn
from energymask.occlusion import occlude, occlusion_robustness


def _model(seed=0):
    torch.manual_seed(seed)
    return Classifier(small_cnn(1, (4, 8, 8)), 8, 3).eval()


def _data(with_mask=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 32, 32, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    m = torch.zeros(10, 1, 32, 32)
    m[:, :, 8:24, 8:24] = 1
    tensors = (x, y, m) if with_mask else (x, y)
    return DataLoader(TensorDataset(*tensors), batch_size=4), x, y


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item()


def test_f0_is_clean_and_f1_is_all_baseline():
    model = _model()
    dl, x, y = _data()
    r = occlusion_robustness({"a": model, "b": _model(1)}, dl, fractions=(0, 1), patch_size=6)
    assert r.accuracy["a"][0] == pytest.approx(_acc(model, x, y))
    assert r.accuracy["a"][1] == pytest.approx(_acc(model, torch.zeros_like(x), y))
    r = occlusion_robustness(model, dl, fractions=(1,), patch_size=8, fill="mean")
    assert r.accuracy["model"][0] == pytest.approx(
        _acc(model, x.mean((2, 3), keepdim=True).expand_as(x), y)
    )


def test_occlude_covers_fraction_and_placement():
    x = torch.ones(2, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    out = occlude(x, 0.25, 4, generator=g)
    assert (out == 0).float().mean().item() == pytest.approx(0.25)
    obj = torch.zeros(2, 16, 16)
    obj[:, :8, :8] = 1
    on = occlude(x, 0.25, 4, "object", object_mask=obj, generator=g)
    assert torch.equal(on[:, 0] == 0, obj.bool())
    off = occlude(x, 0.25, 4, "background", object_mask=obj, generator=g)
    assert not ((off[:, 0] == 0) & obj.bool()).any()
    noise = occlude(torch.randn(2, 3, 16, 16), 0.5, 4, fill="noise", generator=g)
    assert noise.shape == (2, 3, 16, 16)


def test_object_placement_from_batch_and_seeded():
    dl, _, _ = _data(with_mask=True)
    model = _model()
    kw = dict(fractions=(0.25,), patch_size=8, placement="object")
    assert occlusion_robustness(model, dl, **kw).accuracy == occlusion_robustness(
        model, dl, **kw
    ).accuracy


def test_errors():
    dl, x, _ = _data()
    model = _model()
    with pytest.raises(ValueError, match=r"fractions must lie in \[0, 1\]"):
        occlusion_robustness(model, dl, fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match="patch_size must be <= the image size"):
        occlusion_robustness(model, dl, patch_size=40)
    with pytest.raises(ValueError, match="placement must be one of"):
        occlusion_robustness(model, dl, placement="centre")
    with pytest.raises(ValueError, match="fill must be one of"):
        occlusion_robustness(model, dl, fill="blur")
    with pytest.raises(ValueError, match="needs object masks"):
        occlusion_robustness(model, dl, placement="object")
    with pytest.raises(ValueError, match="dataloader is empty"):
        occlusion_robustness(model, [])
    with pytest.raises(ValueError, match="labels"):
        occlusion_robustness(model, [x[:2]])
    with pytest.raises(ValueError, match="at least one model"):
        occlusion_robustness({}, dl)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        occlusion_robustness(model, dl, patch_size=0)
    with pytest.raises(ValueError, match="object_mask must have shape"):
        occlude(x[:2], 0.5, 8, "object", object_mask=torch.zeros(2, 16, 16))


def test_empty_batches():
    dl, x, y = _data()
    model = _model()
    batches = list(dl)
    empty = (x[:0], y[:0])
    assert occlude(x[:0], 0.5, 8).shape == (0, 1, 32, 32)
    ref = occlusion_robustness(model, batches, fractions=(0, 0.5))
    got = occlusion_robustness(model, [*batches, empty], fractions=(0, 0.5))
    assert got.accuracy == ref.accuracy and got.num_samples == ref.num_samples == 10
    with pytest.raises(ValueError, match="yielded 2 batches, all empty"):
        occlusion_robustness(model, [empty, empty])


def test_occlusion_hits_seeded_per_image_equal_batches_of_one():
    from energymask.occlusion import occlusion_hits

    model = _model()
    _, x, y = _data()
    x, y = x[:5], y[:5]
    seeds = torch.arange(5) + 3
    with torch.no_grad():
        hits = occlusion_hits({"m": model}, x, y, None, [0.0, 0.5], 8, "random", "noise", seeds)
        assert hits["m"].shape == (2, 5) and hits["m"].dtype == torch.bool
        for b in range(5):  # the plain function's per-batch seed on a batch of one image
            alone = occlusion_hits({"m": model}, x[b : b + 1], y[b : b + 1], None, [0.0, 0.5], 8,
                                   "random", "noise", 3 + b)
            assert torch.equal(alone["m"][:, 0], hits["m"][:, b])
        with pytest.raises(ValueError, match="patch_size must be <= the image size"):
            occlusion_hits({"m": model}, x, y, None, [0.5], 999, "random", "zero", 0)


def test_batches_go_to_the_models_device(device_stem):
    dl, _, _ = _data()
    results = {}
    for device in ("meta", "cpu"):
        stem = device_stem(device)
        model = torch.nn.Sequential(stem, _model()).eval()
        results[device] = occlusion_robustness(model, dl, fractions=(0, 0.5), patch_size=6)
        assert stem.seen == {device}  # CPU batches moved to the model's device
    assert results["meta"].accuracy == results["cpu"].accuracy
