import pickle

import numpy as np
import pytest
import torch

from energymask.data.cifar10 import CIFAR10Pickles, cifar10_splits, load_cifar10


def _fake(root, n=4, skip=()):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        if name in skip:
            continue
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [(k + j) % 10 for j in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def test_reads_fake_pickles(tmp_path):
    root = _fake(tmp_path / "cifar-10-batches-py")
    train = CIFAR10Pickles(root, train=True)
    test = CIFAR10Pickles(root, train=False)
    assert len(train) == 20 and len(test) == 4
    assert train.classes[3] == "c3"
    x, y = train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.item() == 2  # batch 2 (k = 1), row 1
    with open(root / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(raw))


def test_transform_is_applied(tmp_path):
    root = _fake(tmp_path / "c")
    ds = CIFAR10Pickles(root, train=False, transform=lambda x: x * 0)
    assert ds[0][0].abs().sum() == 0


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_cifar10(tmp_path / "nope")
    root = _fake(tmp_path / "c", skip=("data_batch_3",))
    with pytest.raises(ValueError, match="lacks.*data_batch_3"):
        load_cifar10(root, train=True)
    load_cifar10(root, train=False)  # the test batch alone is fine


def test_malformed_batch(tmp_path):
    root = _fake(tmp_path / "c")
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read"):
        load_cifar10(root, train=False)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(root, train=False)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"x": 1}, f)
    with pytest.raises(ValueError, match="b'labels'"):
        load_cifar10(root, train=False)


def test_splits_disjoint_and_seeded(tmp_path):
    root = _fake(tmp_path / "c", n=10)
    s = cifar10_splits(root, val_fraction=0.2, seed=1)
    assert len(s["train"]) == 40 and len(s["val"]) == 10 and len(s["test"]) == 10
    assert not set(s["train"].indices) & set(s["val"].indices)
    assert s["val"].indices == cifar10_splits(root, val_fraction=0.2, seed=1)["val"].indices
    assert s["val"].indices != cifar10_splits(root, val_fraction=0.2, seed=2)["val"].indices
    with pytest.raises(ValueError, match="val_fraction"):
        cifar10_splits(root, val_fraction=1.0)


class _WritesFile:
    """A pickle payload that would create ``path`` when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("where", ["data", "whole file", "meta"])
def test_malicious_pickle_runs_nothing(tmp_path, where):
    root = _fake(tmp_path / "c")
    target = tmp_path / "pwned"
    evil = _WritesFile(target)
    name = "batches.meta" if where == "meta" else "test_batch"
    payload = evil if where == "whole file" else {b"data": evil, b"labels": [0],
                                                   b"label_names": evil}
    with open(root / name, "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(ValueError, match=rf"cannot read CIFAR-10 batch .*{name}: it asks for io"
                                         r"\.open.*refused"):
        load_cifar10(root, train=False)
    assert not target.exists()


def test_real_format_still_reads(tmp_path):
    """Protocol 2 (bytes via _codecs), numpy scalars and arrays of labels are allowed."""
    root = _fake(tmp_path / "c")
    d = {b"batch_label": b"testing batch 1 of 1", b"filenames": [b"a.png", b"b.png"],
         b"data": np.zeros((2, 3072), np.uint8), b"labels": [np.int64(3), 9]}
    for protocol in (2, 5):
        with open(root / "test_batch", "wb") as f:
            pickle.dump(d, f, protocol=protocol)
        _, labels, _ = load_cifar10(root, train=False)
        assert labels.tolist() == [3, 9]


@pytest.mark.parametrize("labels, match", [
    ([0, 10], r"test_batch: b'labels' must be in 0..9, but label 10 at row 1"),
    ([-1, 2], r"test_batch: b'labels' must be in 0..9, but label -1 at row 0"),
    ([0.5, 1.0], r"test_batch: b'labels' must be a list of ints in 0..9, but got float64"),
    (["cat", "dog"], r"test_batch: b'labels' must be a list of ints"),
])
def test_bad_labels_refused(tmp_path, labels, match):
    root = _fake(tmp_path / "c")
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f)
    with pytest.raises(ValueError, match=match):
        load_cifar10(root, train=False)


def test_bad_data_and_meta_refused(tmp_path):
    root = _fake(tmp_path / "c")
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch: b'data' must be a uint8 NumPy array"):
        load_cifar10(root, train=False)
    with open(root / "test_batch", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match=r"test_batch must hold a dict, but holds a list"):
        load_cifar10(root, train=False)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b"]}, f)
    with pytest.raises(ValueError, match=r"batches.meta: b'label_names' must name 10 classes"):
        load_cifar10(root, train=False)
    (root / "test_batch").write_bytes(b"\x80\x04")  # truncated pickle
    with pytest.raises(ValueError, match=r"cannot read CIFAR-10 batch .*test_batch"):
        load_cifar10(root, train=False)


@pytest.mark.parametrize(("names", "match"), [
    (5, r"b'label_names' must be a list of class names, but got int"),
    ("airplane", r"b'label_names' must be a list of class names, but got str"),
    ([b"\xff\xfe"] * 10, r"b'label_names'\[0\] is not UTF-8 text \(b'\\xff\\xfe'"),
    ([b"a"] * 9 + [3], r"b'label_names'\[9\] must be bytes or str, but got int"),
])
def test_label_names_that_are_not_a_list_of_text_are_refused(tmp_path, names, match):
    root = _fake(tmp_path / "c")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    with pytest.raises(ValueError, match=match):
        load_cifar10(root, train=False)
