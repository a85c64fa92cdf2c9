import numpy as np
import pytest
import torch

from energymask.viz import plot_energy_maps


def test_energy_maps(tmp_path):
    u, p = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    fig, axes = plot_energy_maps(u, p)
    assert axes.shape == (2, 3)
    total = axes[0, 2].get_images()[0].get_array()
    np.testing.assert_allclose(total, (u + p)[0].numpy(), rtol=1e-6)
    assert len(fig.axes) == 12  # six panels and six colour bars
    path = tmp_path / "e.png"
    fig.savefig(path)
    assert path.stat().st_size > 0


def test_energy_maps_single_and_errors():
    _, axes = plot_energy_maps(np.zeros((3, 3)), np.ones((3, 3)), np.ones((3, 3)))
    assert axes.shape == (1, 3)
    with pytest.raises(ValueError, match="share"):
        plot_energy_maps(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
