"""TensorDataModule, ClutteredDigitsDataModule, CIFAR10DataModule, ImageFolderDataModule."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from energymask.lightning_modules.datamodules import (
    CIFAR10DataModule,
    ClutteredDigitsDataModule,
    ImageFolderDataModule,
    TensorDataModule,
)

from helpers import write_cifar, write_image_tree


def test_tensors_and_datasets_give_loaders():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    dm = TensorDataModule((x, y), TensorDataset(x, y), batch_size=4, seed=1)
    first = [b[1].tolist() for b in dm.train_dataloader()]
    again = [b[1].tolist() for b in dm.train_dataloader()]
    assert first == again and sorted(sum(first, [])) == list(range(10))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)  # as the Trainer does: another order for epoch 1
    assert [b[1].tolist() for b in loader] != first
    assert first != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # shuffled
    assert [b[1].tolist() for b in dm.val_dataloader()][0] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no test split was given"):
        dm.test_dataloader()
    assert TensorDataModule((x, y)).val_dataloader() == []  # Lightning skips validation


def test_bad_input():
    x = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TensorDataModule((x, x), batch_size=0)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        TensorDataModule((x, x), num_workers=-1)
    with pytest.raises(ValueError, match="seed must be an int >= 0, but got -1"):
        TensorDataModule((x, x), seed=-1)
    with pytest.raises(ValueError, match="train must be given"):
        TensorDataModule(None)
    with pytest.raises(ValueError, match="same length"):
        TensorDataModule((x, torch.zeros(3)))
    with pytest.raises(TypeError, match="train must be a Dataset, a tuple of tensors"):
        TensorDataModule("data")



# -- dataset DataModules --------------------------------------------------------------------


def _labels(loader):
    return [b[1].tolist() for b in loader]


def test_cluttered_digits_batches_and_determinism():
    dm = ClutteredDigitsDataModule(num_train=12, num_val=6, num_test=5, batch_size=4, seed=3,
                                   with_masks=True)
    assert (dm.num_classes, dm.in_channels, dm.has_object_masks) == (10, 1, True)
    assert dm.train_set is None  # built in setup
    x, y, obj = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 64, 64) and y.shape == (4,) and obj.shape == (4, 1, 64, 64)
    assert set(obj.unique().tolist()) <= {0.0, 1.0}
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 6, 5)
    same = ClutteredDigitsDataModule(num_train=12, num_val=6, num_test=5, batch_size=4, seed=3,
                                     with_masks=True)
    other = ClutteredDigitsDataModule(num_train=12, num_val=6, num_test=5, batch_size=4, seed=4,
                                      with_masks=True)
    assert _labels(dm.train_dataloader()) == _labels(same.train_dataloader())
    assert torch.equal(dm.test_set.images, same.test_set.images)
    other.setup()
    assert not torch.equal(dm.test_set.images, other.test_set.images)
    assert _labels(dm.val_dataloader()) == [dm.val_set.labels[i:i + 4].tolist() for i in (0, 4)]


def test_cluttered_digits_spurious_and_kwargs():
    dm = ClutteredDigitsDataModule(num_train=8, num_val=4, num_test=4, spurious=True,
                                   with_masks=True,
                                   spurious_strength=1.0, canvas=32, digit_size=(12, 14),
                                   clutter_size=6)
    dm.setup()
    assert dm.train_set.images.shape[-1] == 32
    assert torch.equal(dm.train_set.background, dm.train_set.labels)


def test_cifar10_module(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    dm = CIFAR10DataModule(root, val_fraction=0.2, batch_size=5, seed=0)
    assert (dm.num_classes, dm.in_channels, dm.has_object_masks) == (10, 3, False)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 3, 4)
    again = CIFAR10DataModule(root, val_fraction=0.2, batch_size=5, seed=0)
    assert _labels(dm.train_dataloader()) == _labels(again.train_dataloader())
    assert _labels(dm.val_dataloader()) == _labels(again.val_dataloader())


def test_image_folder_module(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    dm = ImageFolderDataModule(root, size=(16, 16), val_fraction=0.2, test_fraction=0.2,
                               batch_size=3, seed=1)
    assert dm.classes == ["a", "b", "c"] and (dm.num_classes, dm.in_channels) == (3, 3)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 3, 16, 16)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 3)
    gray = ImageFolderDataModule(root, size=(8, 8), channels=1, seed=1, batch_size=3,
                                 val_fraction=0.2, test_fraction=0.2)
    assert gray.in_channels == 1 and next(iter(gray.train_dataloader()))[0].shape[1] == 1
    assert _labels(dm.train_dataloader()) == _labels(gray.train_dataloader())  # same seed


def test_dataset_modules_bad_input(tmp_path):
    with pytest.raises(ValueError, match="num_train must be a positive int"):
        ClutteredDigitsDataModule(num_train=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ClutteredDigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="cifar-10-batches-py.*is not a folder"):
        CIFAR10DataModule(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match=r"lacks \['data_batch_1'"):
        CIFAR10DataModule(tmp_path / "half")
    with pytest.raises(ValueError, match="val_fraction must be in"):
        CIFAR10DataModule(write_cifar(tmp_path / "c"), val_fraction=1.0)
    with pytest.raises(ValueError, match="one sub-folder per class.*is not a folder"):
        ImageFolderDataModule(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no class sub-folders"):
        ImageFolderDataModule(tmp_path / "half")
    tree = write_image_tree(tmp_path / "t", per_class=1)
    with pytest.raises(ValueError, match="channels must be 1 or 3, but got 4"):
        ImageFolderDataModule(tree, channels=4)
    with pytest.raises(ValueError, match=r"size must be a positive int or a pair"):
        ImageFolderDataModule(tree, size=(0, 4))
    with pytest.raises(ValueError, match="bad_images must be one of"):
        ImageFolderDataModule(tree, bad_images="ignore")
    (tree / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folders must hold images.*empty"):
        ImageFolderDataModule(tree)
    with pytest.raises(TypeError, match="transform must be a callable"):
        ClutteredDigitsDataModule(transform="flip")
    with pytest.raises(ValueError, match="val_fraction and test_fraction"):
        ImageFolderDataModule(tree, val_fraction=0.5, test_fraction=0.5)


def test_batch_format_and_transform():
    kw = dict(num_train=8, num_val=4, num_test=4, batch_size=4, seed=0)
    x, y = next(iter(ClutteredDigitsDataModule(**kw).train_dataloader()))  # x, y = batch
    assert x.shape == (4, 1, 64, 64) and y.shape == (4,)
    dm = ClutteredDigitsDataModule(**kw, with_masks=True, channels=3, size=32,
                                   normalize=(0.5, 0.25), transform=lambda t: t + 1)
    x, y, mask = next(iter(dm.test_dataloader()))
    assert dm.in_channels == 3 and x.shape == (4, 3, 32, 32) and mask.shape == (4, 1, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2]) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert x.min() == (0 - 0.5) / 0.25 + 1  # background 0, normalised, then transform


def test_image_folder_train_test_layout_at_224(tmp_path):
    write_image_tree(tmp_path / "pets" / "train", per_class=3)
    write_image_tree(tmp_path / "pets" / "test", per_class=1)
    dm = ImageFolderDataModule(tmp_path / "pets", size=224, val_fraction=0.34, batch_size=3,
                               normalize=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    x, y = next(iter(dm.test_dataloader()))
    assert dm.classes == ["a", "b", "c"] and x.shape == (3, 3, 224, 224)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 3, 3)
    assert x.min() < 0  # normalised


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_both_lightning_trainers_accept_the_datamodules(package):
    L = pytest.importorskip(package)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = torch.randn(8, 1), torch.randint(0, 2, (8,))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Tiny(), datamodule=TensorDataModule((x, y), batch_size=4))
    assert trainer.global_step == 2
