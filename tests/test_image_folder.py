import numpy as np
import pytest
import torch
from PIL import Image

from energymask.data._split import split_dataset
from energymask.data.image_folder import ImageFolder, image_folder_splits


def _tree(root):
    rng = np.random.default_rng(0)
    for c, n in [("cat", 2), ("dog", 3)]:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_reads_tree(tmp_path):
    ds = ImageFolder(_tree(tmp_path / "t"))
    assert ds.classes == ["cat", "dog"] and len(ds) == 5
    assert [y for _, y in ds.samples] == [0, 0, 1, 1, 1]
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32 and y.item() == 0
    expected = np.asarray(Image.open(tmp_path / "t" / "cat" / "0.png"), np.float32) / 255
    assert torch.allclose(x, torch.from_numpy(expected).permute(2, 0, 1))


def test_resize_and_gray(tmp_path):
    ds = ImageFolder(_tree(tmp_path / "t"), size=(8, 6), mode="L")
    assert all(ds[i][0].shape == (1, 8, 6) for i in range(len(ds)))


def test_corrupt_image_skipped_with_warning(tmp_path):
    root = _tree(tmp_path / "t")
    (root / "cat" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="bad.png"):
        ds = ImageFolder(root)
    assert len(ds) == 5


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable image"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(_tree(tmp_path / "t"), mode="CMYK")


def test_splits(tmp_path):
    root = _tree(tmp_path / "t")
    s = image_folder_splits(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    idx = [set(s[k].indices) for k in ("train", "val", "test")]
    assert [len(i) for i in idx] == [3, 1, 1]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    with pytest.raises(ValueError, match="test_fraction"):
        image_folder_splits(root, val_fraction=0.5, test_fraction=0.5)


def test_split_dataset_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(list(range(4)), (0.5, 0.6), seed=0)
