import pytest
import torch
from matplotlib.figure import Figure

from energymask.viz import plot_ema_masks, plot_mask_grid


def _saved(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    assert path.is_file() and path.stat().st_size > 0


def test_mask_grid_gray_with_objects(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=g)
    keep = torch.rand(3, 4, 4, generator=g)
    obj = torch.zeros(3, 1, 16, 16)
    obj[:, :, 4:10, 4:10] = 1
    fig, axes = plot_mask_grid(images, keep, obj)
    assert isinstance(fig, Figure) and axes.shape == (3, 3)
    assert axes[0, 1].get_title() == f"keep {keep[0].mean().item():.2f}"
    # The masked panel is the image times the upsampled keep map.
    masked = axes[0, 2].get_images()[0].get_array()
    assert abs(float(masked[0, 0]) - (images[0, 0, 0, 0] * keep[0, 0, 0]).item()) < 1e-5
    _saved(fig, tmp_path, "grid.png")


def test_mask_grid_rgb_into_given_axes(tmp_path):
    fig = Figure()
    axes = fig.subplots(2, 3)
    out_fig, out_axes = plot_mask_grid(torch.rand(2, 3, 8, 8), torch.ones(2, 2, 2), axes=axes)
    assert out_fig is fig and out_axes.shape == (2, 3)
    _saved(fig, tmp_path, "rgb.png")


def test_mask_grid_errors():
    with pytest.raises(ValueError, match="keep_maps"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="axes must hold 6"):
        plot_mask_grid(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), axes=Figure().subplots(1, 3))


def test_ema_masks(tmp_path):
    fig, axes = plot_ema_masks(torch.rand(10, 4, 4), ncols=4)
    assert axes.shape == (3, 4)
    assert sum(a.get_visible() for a in axes.flat) == 10
    _saved(fig, tmp_path, "ema.png")
    with pytest.raises(ValueError, match="ema must be"):
        plot_ema_masks(torch.rand(4, 4))
