"""Given masks: exact keep ratio per sample, seeded, blobs more coherent than random tokens."""

import pytest
import torch

from energymask.sparse_masks import blob_mask, random_mask


@pytest.mark.parametrize("make", [random_mask, blob_mask])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.37, 1.0])
def test_exact_keep_per_sample_and_seeded(make, keep):
    mask = make(3, (7, 9), keep, seed=4)
    assert mask.shape == (3, 7, 9)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum((1, 2)).tolist() == [round(keep * 63)] * 3
    assert torch.equal(mask, make(3, (7, 9), keep, seed=4))


def test_blobs_have_fewer_edges_than_random_tokens():
    def edges(m):
        return (m[:, 1:] != m[:, :-1]).sum() + (m[:, :, 1:] != m[:, :, :-1]).sum()

    assert edges(blob_mask(4, (28, 28), 0.3)) < 0.4 * edges(random_mask(4, (28, 28), 0.3))


@pytest.mark.parametrize("keep", [-0.1, 1.5, True, "0.3"])
def test_keep_must_be_in_unit_interval(keep):
    with pytest.raises(ValueError, match="keep must be a number in"):
        random_mask(1, (4, 4), keep)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="batch and size must be positive"):
        blob_mask(1, (0, 4), 0.5)
