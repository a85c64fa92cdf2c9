import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from energymask.data import image_folder
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


def test_corrupt_image_refused_or_skipped(tmp_path):
    root = _tree(tmp_path / "t")
    (root / "cat" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"1 image\(s\) under .* cannot be decoded: "
                                         r".*cat/bad.png \(.*\).*bad_images='skip'"):
        ImageFolder(root)
    with pytest.warns(UserWarning, match=r"skipping 1 image\(s\) .*cat/bad.png"):
        ds = ImageFolder(root, bad_images="skip")
    assert len(ds) == 5 and [p.name for p, _ in ds.skipped] == ["bad.png"]
    with pytest.raises(ValueError, match="bad_images must be one of"):
        ImageFolder(root, bad_images="ignore")


def _truncated_jpeg(path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_caught_at_scan_when_decoding_there(tmp_path):
    root = _tree(tmp_path / "t")
    _truncated_jpeg(root / "dog" / "big.jpg")
    with pytest.raises(ValueError, match=r"decoded: .*dog/big.jpg \(OSError: .*truncated"):
        ImageFolder(root, scan="decode")
    with pytest.raises(ValueError, match=r"scan must be one of \('header', 'decode'\), "
                                         r"but got 'full'"):
        ImageFolder(root, scan="full")


def test_truncated_jpeg_found_lazily_names_the_file(tmp_path):
    root = _tree(tmp_path / "t")
    _truncated_jpeg(root / "dog" / "big.jpg")
    ds = ImageFolder(root)  # the header is fine: the scan passes it
    assert len(ds) == 6 and ds.skipped == []
    bad = [p.name for p, _ in ds.samples].index("big.jpg")
    with pytest.raises(ValueError, match=r"image .*dog/big.jpg cannot be decoded \(OSError: "
                                         r".*truncated.*scan reads headers only.*"
                                         r"--bad-images skip"):
        ds[bad]
    assert torch.equal(ds[0][0], ImageFolder(root, bad_images="skip")[0][0])  # others fine


def test_truncated_file_skipped_lazily_with_a_warning(tmp_path):
    root = _tree(tmp_path / "t")
    _truncated_jpeg(root / "dog" / "big.jpg")
    ds = ImageFolder(root, bad_images="skip")
    bad = [p.name for p, _ in ds.samples].index("big.jpg")
    with pytest.warns(UserWarning, match=r"skipping image .*dog/big.jpg .*next readable"):
        x, y = ds[bad]
    following = ds[(bad + 1) % len(ds)]  # the next image in the folder's order, as given
    assert torch.equal(x, following[0]) and y == following[1]
    assert [p.name for p, _ in ds.skipped] == ["big.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        assert torch.equal(ds[bad][0], x)


def test_scan_reads_headers_only(tmp_path, monkeypatch):
    root = _tree(tmp_path / "t")
    calls = []
    monkeypatch.setattr(image_folder, "decode",
                        lambda *a, **k: calls.append(a) or np.zeros((2, 2, 3), np.float32))
    ds = ImageFolder(root)
    assert calls == []  # nothing decoded at scan
    ds[3]
    assert len(calls) == 1 and calls[0][0] == ds.samples[3][0]
    ImageFolder(root, scan="decode")
    assert len(calls) == 1 + len(ds)


def test_scan_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    ImageFolder(_tree(tmp_path / "t"), progress=True)
    assert "scanning t" in capsys.readouterr().err
    ImageFolder(tmp_path / "t", progress=False)
    assert capsys.readouterr().err == ""


def test_lazy_errors_raise_in_dataloader_workers(tmp_path):
    root = _tree(tmp_path / "t")
    _truncated_jpeg(root / "dog" / "big.jpg")
    loader = torch.utils.data.DataLoader(ImageFolder(root, size=(8, 8)), batch_size=6,
                                         num_workers=1)
    with pytest.raises(ValueError, match=r"dog/big.jpg cannot be decoded"):
        next(iter(loader))


def test_16_bit_png_scaled_not_saturated(tmp_path):
    (tmp_path / "t" / "a").mkdir(parents=True)
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "t" / "a" / "deep.png")
    assert Image.open(tmp_path / "t" / "a" / "deep.png").mode.startswith("I")
    x, _ = ImageFolder(tmp_path / "t", mode="L")[0]
    torch.testing.assert_close(x, torch.from_numpy(values / 65535.0).float()[None])
    rgb, _ = ImageFolder(tmp_path / "t")[0]
    assert rgb.shape == (3, 1, 4) and torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[:1], x)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat")
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(_tree(tmp_path / "t"), mode="CMYK")


def test_empty_class_folder_refused(tmp_path):
    root = _tree(tmp_path / "t")
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"class folders must hold images .*but \[.*emu'\]"):
        ImageFolder(root)
    (root / "emu" / "bad.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="bad.png"), \
            pytest.raises(ValueError, match=r"hold none once the bad ones are skipped"):
        ImageFolder(root, bad_images="skip")


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


def test_empty_split_refused(tmp_path):
    root = _tree(tmp_path / "t")  # 5 images: 0.1 of them is none
    with pytest.raises(ValueError, match=r"the val split of image folder .* is empty: "
                                         r"5 images x 0.1 rounds down to 0"):
        image_folder_splits(root, val_fraction=0.1, test_fraction=0.4)
    s = image_folder_splits(root, val_fraction=0.0, test_fraction=0.2)
    assert s["val"] is None and len(s["test"]) == 1 and len(s["train"]) == 4


def test_train_test_layout(tmp_path):
    _tree(tmp_path / "t" / "train")
    _tree(tmp_path / "t" / "test")
    s = image_folder_splits(tmp_path / "t", val_fraction=0.2, test_fraction=0.0)
    assert len(s["val"]) == 1 and len(s["train"]) == 4 and len(s["test"]) == 5
    assert s["test"].classes == ["cat", "dog"]
    (tmp_path / "t" / "test" / "cow").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "t" / "test" / "cow" / "a.png")
    with pytest.raises(ValueError, match=r"must have the same class folders, but got "
                                         r"\['cat', 'dog'\] and \['cat', 'cow', 'dog'\]"):
        image_folder_splits(tmp_path / "t")


def test_nan_fraction_refused(tmp_path):
    with pytest.raises(ValueError, match=r"val_fraction and test_fraction .* but got nan"):
        image_folder_splits(_tree(tmp_path / "t"), val_fraction=float("nan"))


def _png_16bit_rgb(path, pixels):
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png_scaled(tmp_path):
    (tmp_path / "t" / "a").mkdir(parents=True)
    pixels = np.array([[[0, 32768, 65535], [65535, 0, 257]]], dtype=np.uint16)
    _png_16bit_rgb(tmp_path / "t" / "a" / "rgb48.png", pixels)
    x, _ = ImageFolder(tmp_path / "t")[0]
    expected = torch.from_numpy(pixels / 65535.0).float().permute(2, 0, 1)
    torch.testing.assert_close(x, expected, rtol=0, atol=1 / 255)  # Pillow keeps 8 bits
