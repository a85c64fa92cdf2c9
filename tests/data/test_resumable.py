import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from energymask.data.resumable import (
    EpochSampler,
    ResumableLoader,
    SeededItems,
    epoch_seed,
    item_seed,
    seeded_generators,
)


def test_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    a.set_epoch(1)
    assert list(a) != first and list(a) == list(a)  # a new order, the same each pass
    b.set_epoch(1)
    assert list(a) == list(b)
    assert epoch_seed(0, 1) != epoch_seed(1, 0)
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def _loader(seed=0):
    ds = TensorDataset(torch.arange(10))
    return ResumableLoader(ds, batch_size=3, sampler=EpochSampler(10, seed),
                           generator=torch.Generator())


def test_resumes_mid_epoch_where_it_stopped():
    straight = _loader()
    straight.sampler.set_epoch(2)
    batches = [b[0].tolist() for b in straight]
    assert straight.state_dict() == {"epoch": 2, "samples": 10}

    killed = _loader()
    killed.sampler.set_epoch(2)
    it = iter(killed)
    next(it), next(it)
    state = killed.state_dict()
    assert state == {"epoch": 2, "samples": 6}

    resumed = _loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.sampler.set_epoch(2)
    assert [b[0].tolist() for b in resumed] == batches[2:]
    assert resumed.state_dict() == {"epoch": 2, "samples": 10}
    resumed.sampler.set_epoch(3)  # the skip was for epoch 2 only
    assert len(list(resumed)) == 4

    other = _loader()
    other.load_state_dict({"epoch": 1, "samples": 10})  # saved at epoch 1's end
    other.sampler.set_epoch(2)
    assert [b[0].tolist() for b in other] == batches


def test_bad_input():
    ds = TensorDataset(torch.arange(4))
    plain = ResumableLoader(ds, batch_size=2)  # as Lightning rebuilds it for DDP
    assert [b[0].tolist() for b in plain] == [[0, 1], [2, 3]] and plain.state_dict() == {}
    plain.load_state_dict({})
    with pytest.raises(ValueError, match="needs an int batch_size"):
        ResumableLoader(ds, batch_size=None, sampler=EpochSampler(4))
    with pytest.raises(ValueError, match="state_dict must have the keys 'epoch' and 'samples'"):
        _loader().load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="seed must be an int >= 0, but got -1"):
        EpochSampler(4, seed=-1)
    with pytest.raises(ValueError, match="num_samples must be an int >= 0"):
        EpochSampler(2.5)
    assert isinstance(_loader(), DataLoader)


class _Noisy(torch.utils.data.Dataset):
    """Draws from all three global generators, as augmentations do."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import random

        import numpy as np
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), np.random.rand()])


def _noisy_epoch(num_workers, batch_size, state=None):
    loader = ResumableLoader(_Noisy(), batch_size=batch_size, sampler=EpochSampler(8, seed=4),
                             num_workers=num_workers)
    if state is not None:
        loader.load_state_dict(state)
    loader.sampler.set_epoch(1)
    return torch.cat(list(loader))


def test_items_draw_from_generators_seeded_by_seed_epoch_and_index():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    straight = _noisy_epoch(0, 3)
    assert torch.equal(torch.get_rng_state(), before)  # the training's own stream untouched
    assert straight[:, 1:].unique().numel() == 24  # every item and generator draws anew
    assert torch.equal(_noisy_epoch(2, 3), straight)  # in workers too
    assert torch.equal(_noisy_epoch(0, 2), straight)  # any batch size
    assert torch.equal(_noisy_epoch(2, 3, {"epoch": 1, "samples": 3}), straight[3:])  # resumed
    loader = ResumableLoader(_Noisy(), batch_size=3, sampler=EpochSampler(8, seed=4))
    assert torch.equal(torch.cat(list(loader)), _noisy_epoch(0, 3)) is False  # another epoch
    assert isinstance(loader.generator, torch.Generator)  # the workers' base seed: not global
    assert item_seed(4, 1, 2) != item_seed(4, 2, 1) and item_seed(4, 1, 2) == item_seed(4, 1, 2)


def test_seeded_generators_and_items():
    import random

    import numpy as np
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    with seeded_generators(7):
        first = (random.random(), np.random.rand(), torch.rand(()))
    after = (random.random(), np.random.rand(), torch.rand(()))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    assert (random.random(), np.random.rand(), torch.rand(())) == after  # restored
    with seeded_generators(7):
        assert (random.random(), np.random.rand(), torch.rand(())) == first
    items = SeededItems(_Noisy(), seed=4)
    assert len(items) == 8 and torch.equal(items[(1, 2)], items[(1, 2)])
    assert not torch.equal(items[(1, 2)], items[(2, 2)])
    assert items[2][0] == 2  # a plain index: the item as the dataset gives it
