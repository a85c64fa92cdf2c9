import numpy as np
import pytest
import torch

from energymask.viz import plot_energy_maps


def test_energy_maps_border_left_out(tmp_path):
    u, p = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    p[:, 0, :] = -100.0  # a border that would dominate the scale
    fig, axes = plot_energy_maps(u, p)
    assert axes.shape == (2, 3)
    total = np.ma.filled(axes[0, 2].get_images()[0].get_array(), np.nan)
    inner = (u + p)[0, 1:-1, 1:-1].numpy()
    np.testing.assert_allclose(total[1:-1, 1:-1], inner, rtol=1e-6)
    assert np.isnan(total[0]).all() and np.isnan(total[:, -1]).all()
    pairwise = axes[0, 1].get_images()[0]
    assert pairwise.norm.vmin == pytest.approx(p[0, 1:-1, 1:-1].min().item())
    assert [a.get_title() for a in axes[0]] == ["unary U", "pairwise P", "total E = U + P"]
    assert len(fig.axes) == 12  # six panels and six colour bars
    path = tmp_path / "e.png"
    fig.savefig(path)
    assert path.stat().st_size > 0


def test_energy_maps_beside_images_and_full_border(tmp_path):
    u, p = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    images = torch.rand(2, 1, 16, 16)
    fig, axes = plot_energy_maps(u, p, images=images, border=0)
    assert axes.shape == (2, 4) and axes[0, 0].get_title() == "input"
    np.testing.assert_allclose(axes[1, 0].get_images()[0].get_array(), images[1, 0].numpy())
    np.testing.assert_allclose(axes[0, 2].get_images()[0].get_array(), p[0].numpy())
    assert fig.get_supxlabel() == ""
    fig.savefig(tmp_path / "i.png")


def test_energy_maps_single_and_errors():
    _, axes = plot_energy_maps(np.zeros((3, 3)), np.ones((3, 3)), np.ones((3, 3)))
    assert axes.shape == (1, 3)
    with pytest.raises(ValueError, match="share"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"border must be an int in \[0, 1\]"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), border=2)
    with pytest.raises(ValueError, match="images must be"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), images=torch.zeros(1, 1, 6, 6))
