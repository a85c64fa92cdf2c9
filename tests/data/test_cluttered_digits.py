import pytest
import torch

from energymask.data.cluttered_digits import (
    generate_cluttered_digits,
    load_source_digits,
    make_splits,
)

SMALL = dict(num_train=300, num_val=100, num_test=300)


@pytest.fixture(scope="module")
def splits():
    return make_splits(seed=3, **SMALL)


def test_items_shapes_and_range(splits):
    x, y, m = splits["train"][0]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and m.shape == (1, 64, 64) and m.dtype == torch.float32
    imgs = splits["train"].images
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert [len(splits[k]) for k in ("train", "val", "test")] == [300, 100, 300]


def test_determinism_by_seed(splits):
    again = make_splits(seed=3, **SMALL)
    other = make_splits(seed=4, **SMALL)
    for k in ("train", "val", "test"):
        assert torch.equal(splits[k].images, again[k].images)
        assert torch.equal(splits[k].labels, again[k].labels)
        assert torch.equal(splits[k].object_masks, again[k].object_masks)
        assert not torch.equal(splits[k].images, other[k].images)


def test_splits_share_no_source(splits):
    ids = {k: set(splits[k].source_index.tolist()) for k in splits}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]


def test_labels_match_sources(splits):
    _, labels = load_source_digits()
    for k in splits:
        assert torch.equal(splits[k].labels, labels[splits[k].source_index])


def test_masks_align_with_digits(splits):
    ds = splits["train"]
    m = ds.object_masks.bool()
    assert (m.flatten(1).sum(1) > 10).all()
    # Mask pixels are bright (the digit is drawn on top, threshold 0.3).
    assert (ds.images[m] > 0.3).all()
    for i in range(50):
        t, l, h, w = ds.boxes[i].tolist()
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[t:t + h, l:l + w] = True
        # The mask lies in the digit box; in the box, off-mask pixels are dim.
        assert not (m[i, 0] & ~inside).any()
        off = inside & ~m[i, 0]
        assert (ds.images[i, 0][off] <= 0.3).all()
    # Clutter exists outside the digit boxes.
    assert (ds.images * (1 - ds.object_masks)).amax() > 0.1


def test_spurious_correlation_train_not_test():
    s = make_splits(seed=0, spurious=True, spurious_strength=0.9, **SMALL)
    agree_train = (s["train"].background == s["train"].labels).float().mean().item()
    agree_test = (s["test"].background == s["test"].labels).float().mean().item()
    assert agree_train > 0.85  # expected 0.9 + 0.1 * 0.1 = 0.91
    assert agree_test < 0.2  # expected 0.1
    # The background is visible in the pixels: it varies with its type.
    bg = s["train"].background
    corner = s["train"].images[:, 0, :4, :4].flatten(1)
    means = torch.stack([corner[bg == k].mean(0) for k in range(10)])
    assert means.std(0).mean() > 0.01
    plain = make_splits(seed=0, **SMALL)
    assert (plain["train"].background == -1).all()


def test_errors():
    src, lab = load_source_digits()
    with pytest.raises(ValueError, match="digit_size"):
        generate_cluttered_digits(src[:10], lab[:10], 4, digit_size=(30, 80))
    with pytest.raises(ValueError, match="background"):
        generate_cluttered_digits(src[:10], lab[:10], 4, background="stripes")
    with pytest.raises(ValueError, match="spurious_strength"):
        generate_cluttered_digits(src[:10], lab[:10], 4, spurious_strength=1.5)
    with pytest.raises(ValueError, match="sources"):
        generate_cluttered_digits(src[:1], lab[:1], 4)
    with pytest.raises(ValueError, match="clutter_size"):
        generate_cluttered_digits(src[:10], lab[:10], 4, clutter_size=40)
    with pytest.raises(ValueError, match="num_samples"):
        generate_cluttered_digits(src[:10], lab[:10], -1)
    with pytest.raises(ValueError, match="mask_threshold"):
        generate_cluttered_digits(src[:10], lab[:10], 4, mask_threshold=1.0)
    with pytest.raises(ValueError, match="source_fractions"):
        make_splits(source_fractions=(0.5, 0.5, 0.0))


@pytest.mark.parametrize("name", ["clutter_intensity", "background_amplitude",
                                  "spurious_strength", "mask_threshold"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_float_settings_must_be_finite(name, value):
    src, lab = load_source_digits()
    with pytest.raises(ValueError, match=rf"{name} must .* but got {value}"):
        generate_cluttered_digits(src[:10], lab[:10], 4, **{name: value})
