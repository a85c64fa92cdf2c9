import pytest
import torch
from torch.utils.data import TensorDataset

from energymask.data.transforms import Formatted, ImageTransform


def test_channels_size_normalize():
    grey = torch.rand(1, 8, 8)
    x = ImageTransform(channels=3, size=(4, 6), normalize=([0.5, 0.5, 0.5], [2.0, 2.0, 2.0]))(grey)
    assert x.shape == (3, 4, 6) and torch.equal(x[0], x[1])
    rgb = torch.rand(3, 5, 5)
    luma = ImageTransform(channels=1)(rgb)
    torch.testing.assert_close(luma[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    same = ImageTransform(size=5, normalize=(0.0, 1.0))(rgb)
    torch.testing.assert_close(same, rgb, rtol=0, atol=0)
    mask = (torch.rand(1, 8, 8) > 0.5).float()
    assert set(ImageTransform(size=16).mask(mask).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=2), "channels must be 1, 3 or None, but got 2"),
    (dict(size=0), r"size must be a positive int or a pair \(H, W\) of them, but got 0"),
    (dict(size=(4, 4, 4)), "size must be a positive int or a pair"),
    (dict(normalize=0.5), r"normalize must be \(mean, std\), but got 0.5"),
    (dict(normalize=(float("nan"), 1.0)), r"finite \(no NaN or Inf\), but got \(nan"),
    (dict(normalize=(0.0, 0.0)), "normalize's std must be > 0"),
    (dict(channels=3, normalize=((0.1, 0.2), 1.0)), "normalize needs 1 or 3 values"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageTransform(**kwargs)


def test_formatted_keeps_or_drops_masks():
    x, y, m = torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), torch.ones(2, 1, 4, 4)
    ds = TensorDataset(x, y, m)
    assert len(Formatted(ds)[0]) == 2 and len(Formatted(ds)) == 2
    xi, yi, mi = Formatted(ds, ImageTransform(size=8), lambda t: -t, with_masks=True)[1]
    assert xi.shape == (1, 8, 8) and xi.max() <= 0 and mi.shape == (1, 8, 8) and yi == 1
    with pytest.raises(ValueError, match=r"with_masks=True needs items \(x, y, object_mask\)"):
        Formatted(TensorDataset(x, y), with_masks=True)[0]
