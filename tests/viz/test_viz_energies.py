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
    assert [a.get_title().split("\n")[0] for a in axes[0]] == [
        "unary U = λ softplus(z)", "pairwise P", "total E = U + P"]
    assert "does not set the keep" in axes[0, 2].get_title()
    assert "low energy = kept" not in fig.get_supxlabel()
    assert "P and E enter only the regulariser" in fig.get_supxlabel()
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
    assert "grey" not in fig.get_supxlabel()
    fig.savefig(tmp_path / "i.png")


def test_energy_maps_show_the_logit_that_sets_the_keep(tmp_path):
    g = torch.Generator().manual_seed(0)
    z, p = torch.randn(2, 5, 5, generator=g), torch.randn(2, 5, 5, generator=g)
    u = 1e-3 * torch.nn.functional.softplus(z)
    fig, axes = plot_energy_maps(u, p, logits=z)
    assert axes[0, 0].get_title().startswith("logit z: sets the keep")
    shown = axes[0, 0].get_images()[0]
    np.testing.assert_allclose(shown.get_array(), z[0].numpy())  # every token, ring included
    half = z[0].abs().max().item()
    assert (shown.norm.vmin, shown.norm.vmax) == pytest.approx((-half, half))  # 0 = keep 0.5
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert bars[0].get_ylabel() == "z (< 0: keep > 0.5)"
    fig.savefig(tmp_path / "z.png")
    with pytest.raises(ValueError, match=r"logits must have the shape of unary \(2, 5, 5\)"):
        plot_energy_maps(u, p, logits=z[:, :4])


def test_energy_maps_single_and_errors():
    _, axes = plot_energy_maps(np.zeros((3, 3)), np.ones((3, 3)), np.ones((3, 3)))
    assert axes.shape == (1, 3)
    with pytest.raises(ValueError, match="share"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"border must be an int in \[0, 1\]"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), border=2)
    with pytest.raises(ValueError, match="images must be"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), images=torch.zeros(1, 1, 6, 6))
