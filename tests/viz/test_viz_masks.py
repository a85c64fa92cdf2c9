import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from energymask.viz import plot_ema_masks, plot_keep_comparison, plot_keep_masks, plot_mask_grid


def _saved(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    assert path.is_file() and path.stat().st_size > 0


def _colorbar_range(fig):
    """(vmin, vmax) of the figure's colour bars, in the order they were added."""
    return [tuple(a.get_ylim()) for a in fig.axes if a.get_label() == "<colorbar>"]


def test_mask_grid_gray_with_objects_labels_and_data_scale(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=g)
    keep = 0.3 + 0.2 * torch.rand(3, 4, 4, generator=g)  # values in [0.3, 0.5]
    obj = torch.zeros(3, 1, 16, 16)
    obj[:, :, 4:10, 4:10] = 1
    fig, axes = plot_mask_grid(images, keep, obj, labels=torch.tensor([1, 2, 3]),
                               predictions=torch.tensor([1, 5, 3]), data_range=True)
    assert isinstance(fig, Figure) and axes.shape == (3, 4)
    lo, hi = keep.min().item(), keep.max().item()
    flag = f"[data range {lo:.3f}-{hi:.3f}, not 0-1]"
    assert axes[0, 1].get_title() == f"keep map {flag}\nmean {keep[0].mean().item():.2f}"
    assert axes[1, 1].get_title() == f"mean {keep[1].mean().item():.2f}"
    assert axes[0, 0].get_title() == "image\ntrue 1 · pred 1"
    assert axes[1, 0].get_title() == "true 2 · pred 5" and axes[1, 0].title.get_color() == "red"
    # One colour bar, on the data's min..max, shared by keep map, overlay and masked image.
    assert _colorbar_range(fig) == [pytest.approx((lo, hi))]
    keep_img = axes[0, 1].get_images()[0]
    assert keep_img.norm.vmin == pytest.approx(lo) and keep_img.norm.vmax == pytest.approx(hi)
    assert len(axes[0, 2].get_images()) == 2  # the image, the keep map over it
    # The masked panel is the image times the upsampled keep map, divided by the scale top.
    masked = axes[0, 3].get_images()[0].get_array()
    expected = (images[0, 0, 0, 0] * keep[0, 0, 0]).item() / hi
    assert abs(float(masked[0, 0]) - expected) < 1e-5
    assert len(axes[0, 0].collections) == 1  # the object outline
    _saved(fig, tmp_path, "grid.png")


def test_mask_grid_keeps_zero_to_one_by_default(tmp_path):
    keep = 0.48 + 0.011 * torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 1, 16, 16)
    fig, axes = plot_mask_grid(images, keep)
    assert _colorbar_range(fig) == [(0.0, 1.0)]  # a 0.480-0.491 map looks half kept
    assert axes[0, 1].get_images()[0].norm.vmax == 1.0
    assert axes[0, 1].get_title().startswith("keep map\n")  # no scale flag
    assert axes[0, 3].get_title() == "image x keep"
    masked = axes[0, 3].get_images()[0].get_array()
    assert abs(float(masked[0, 0]) - (images[0, 0, 0, 0] * keep[0, 0, 0]).item()) < 1e-5
    label = [a for a in fig.axes if a.get_label() == "<colorbar>"][0].get_ylabel()
    assert label == "keep probability (0 to 1)"
    with pytest.raises(ValueError, match="vmin and vmax must then be None, but got 0.2 and None"):
        plot_mask_grid(images, keep, vmin=0.2, data_range=True)


def test_mask_grid_warns_on_a_small_token_grid():
    with pytest.warns(UserWarning, match=r"token grid 2x2 is below 4x4.*--image-size 224"):
        fig, _ = plot_mask_grid(torch.rand(1, 3, 64, 64), torch.rand(1, 2, 2))
    assert fig.get_supxlabel().startswith("Warning: token grid 2x2 is below 4x4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, _ = plot_mask_grid(torch.rand(1, 3, 64, 64), torch.rand(1, 4, 4))
    assert fig.get_supxlabel() == ""


def test_mask_grid_fixed_scale_rgb_into_given_axes(tmp_path):
    fig = Figure()
    axes = fig.subplots(2, 4)
    out_fig, out_axes = plot_mask_grid(torch.rand(2, 3, 8, 8), torch.ones(2, 4, 4), axes=axes,
                                       vmin=0.5, vmax=1.0, labels=[0, 1], class_names="ab")
    assert out_fig is fig and out_axes.shape == (2, 4)
    assert _colorbar_range(fig) == [(0.5, 1.0)]
    assert "[fixed scale 0.5-1]" in out_axes[0, 1].get_title()
    assert out_axes[1, 0].get_title() == "true b"
    _saved(fig, tmp_path, "rgb.png")


def test_mask_grid_constant_map_still_has_a_scale():
    fig, _ = plot_mask_grid(torch.rand(1, 1, 8, 8), torch.full((1, 4, 4), 0.4), data_range=True)
    (lo, hi), = _colorbar_range(fig)
    assert lo < 0.4 < hi


def test_mask_grid_errors():
    with pytest.raises(ValueError, match="keep_maps"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="axes must hold 8"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), axes=Figure().subplots(1, 3))
    with pytest.raises(ValueError, match="labels must hold one class per image \\(2\\)"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), labels=[1, 2, 3])
    with pytest.raises(ValueError, match="predictions must hold one class per image"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), predictions=[1])


def test_keep_comparison_soft_beside_binary_on_one_scale(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=g)
    soft = 0.38 + 0.02 * torch.rand(3, 4, 4, generator=g)  # a dimmed map
    hard = (torch.rand(3, 4, 4, generator=g) > 0.7).float()  # an executed binary mask
    obj = torch.zeros(3, 1, 16, 16)
    obj[:, :, 4:10, 4:10] = 1
    maps = {"authors' soft keep": soft, "ours, gate='hard'": hard}
    fig, axes = plot_keep_comparison(images, maps, obj, labels=torch.tensor([1, 2, 3]),
                                     predictions={"ours, gate='hard'": torch.tensor([1, 5, 3])},
                                     max_rows=2)
    assert isinstance(fig, Figure) and axes.shape == (2, 3)
    assert axes[0, 0].get_title() == "image\ntrue 1" and axes[1, 0].get_title() == "true 2"
    assert axes[0, 1].get_title() == "authors' soft keep"
    assert axes[0, 2].get_title() == "ours, gate='hard'" and axes[1, 2].get_title() == ""
    assert axes[0, 1].get_xlabel() == f"mean keep {soft[0].mean().item():.2f}"  # no predictions
    assert axes[0, 2].get_xlabel() == f"pred 1 · mean keep {hard[0].mean().item():.2f}, binary"
    assert axes[0, 2].xaxis.label.get_color() == "black"
    assert axes[1, 2].get_xlabel().startswith("pred 5 · ")
    assert axes[1, 2].xaxis.label.get_color() == "red"  # true 2
    # One colour bar on [0, 1] for both maps: the dimmed map is not stretched.
    assert _colorbar_range(fig) == [(0.0, 1.0)]
    for j in (1, 2):
        shown = axes[0, j].get_images()[0]
        assert (shown.norm.vmin, shown.norm.vmax) == (0.0, 1.0)
        assert shown.get_array().shape == (16, 16)  # upsampled to the image
    assert float(axes[0, 1].get_images()[0].get_array()[0, 0]) == pytest.approx(
        soft[0, 0, 0].item())
    assert all(len(a.collections) == 1 for a in axes[0])  # the object outline on every panel
    _saved(fig, tmp_path, "comparison.png")


def test_keep_comparison_warns_on_a_small_token_grid():
    with pytest.warns(UserWarning, match="keep map of b: token grid 2x2"):
        plot_keep_comparison(torch.rand(1, 3, 8, 8), {"a": torch.rand(1, 4, 4),
                                                      "b": torch.rand(1, 2, 2)})


def test_keep_comparison_errors():
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="a non-empty dict"):
        plot_keep_comparison(images, {})
    with pytest.raises(ValueError, match=r"keep_maps\['a'\] must be \(2, h, w\)"):
        plot_keep_comparison(images, {"a": torch.rand(3, 4, 4)})
    with pytest.raises(ValueError, match=r"predictions must be keyed by keep_maps' titles"):
        plot_keep_comparison(images, {"a": torch.rand(2, 4, 4)}, predictions={"b": [1, 2]})
    with pytest.raises(ValueError, match=r"predictions\['a'\] must hold one class per image"):
        plot_keep_comparison(images, {"a": torch.rand(2, 4, 4)}, predictions={"a": [1]})
    with pytest.raises(ValueError, match="labels must hold one class per image"):
        plot_keep_comparison(images, {"a": torch.rand(2, 4, 4)}, labels=[1, 2, 3])
    with pytest.raises(ValueError, match="axes must hold 4"):
        plot_keep_comparison(images, {"a": torch.rand(2, 4, 4)}, axes=Figure().subplots(1, 3))


def test_keep_masks_per_layer_scale_and_epoch(tmp_path):
    masks = {"a": 0.4 + 0.1 * torch.rand(2, 4, 4), "b": torch.rand(2, 2, 2)}
    with pytest.warns(UserWarning, match="keep map of b: token grid 2x2"):
        fig, axes = plot_keep_masks(torch.rand(2, 3, 8, 8), masks, epoch=3)
    assert axes.shape == (2, 3)
    assert fig.get_suptitle() == "ERSM keep maps, epoch 3"
    assert axes[0, 1].get_title() == f"a\nmean {masks['a'][0].mean().item():.2f}"
    assert axes[0, 2].get_title().startswith("b\n[grid below 4x4]")
    assert _colorbar_range(fig) == [(0.0, 1.0), (0.0, 1.0)]
    _saved(fig, tmp_path, "keep.png")
    with pytest.warns(UserWarning, match="token grid 2x2"):
        fig, axes = plot_keep_masks(torch.rand(2, 3, 8, 8), masks, data_range=True)
    ranges = _colorbar_range(fig)
    assert ranges[0] == pytest.approx((masks["a"].min().item(), masks["a"].max().item()))
    assert ranges[1] == pytest.approx((masks["b"].min().item(), masks["b"].max().item()))
    assert "data range" in axes[0, 1].get_title()
    fig, _ = plot_keep_masks(torch.rand(1, 1, 8, 8), {"a": torch.rand(1, 4, 4)})
    assert fig.get_suptitle() == "ERSM keep maps"


def test_keep_masks_errors():
    with pytest.raises(ValueError, match="a non-empty dict"):
        plot_keep_masks(torch.rand(2, 1, 8, 8), {})
    with pytest.raises(ValueError, match=r"masks\['a'\] must be \(2, h, w\)"):
        plot_keep_masks(torch.rand(2, 1, 8, 8), {"a": torch.rand(3, 2, 2)})


def test_ema_masks(tmp_path):
    ema = 0.8 + 0.2 * torch.rand(10, 4, 4)
    dropped = torch.zeros(10, 4, 4)
    dropped[0, 1, 2] = 1
    fig, axes = plot_ema_masks(ema, layer="backbone.layer2", p=0.1, dropped=dropped, ncols=4)
    assert axes.shape == (3, 4)
    assert sum(a.get_visible() for a in axes.flat) == 10
    assert "at backbone.layer2, p = 0.1" in fig.get_suptitle()
    assert _colorbar_range(fig) == [(0.0, 1.0)] and "range" not in fig.get_suptitle()
    fig, _ = plot_ema_masks(ema, data_range=True)
    assert _colorbar_range(fig) == [pytest.approx((ema.min().item(), ema.max().item()))]
    assert "[data range" in fig.get_suptitle()
    fig, axes = plot_ema_masks(ema, layer="backbone.layer2", p=0.1, dropped=dropped, ncols=4)
    offsets = axes[0, 0].collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(offsets), [[2, 1]])
    _saved(fig, tmp_path, "ema.png")
    with pytest.raises(ValueError, match="ema must be"):
        plot_ema_masks(torch.rand(4, 4))
    with pytest.raises(ValueError, match="dropped must have the shape of ema"):
        plot_ema_masks(ema, dropped=torch.zeros(10, 2, 2))
