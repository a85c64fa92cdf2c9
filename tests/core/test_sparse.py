"""Sparse execution equals the dense masked-residual model (float32, 1e-5), names dense blocks."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from energymask.masked_residual import masked_residual, masking, pool_mask
from energymask.sparse import (
    DENSE_THRESHOLD,
    STRIDING_DENSE_THRESHOLD,
    SparseBlock,
    sparsify,
)
from energymask.sparse_masks import blob_mask, random_mask

KEEPS = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]


def _calibrated(model: nn.Module, size: int) -> nn.Module:
    """Running BatchNorm statistics from a few random batches, so activations stay O(1)."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


@pytest.fixture(scope="module")
def pairs():
    found = {}
    for arch, size in (("resnet18", 64), ("resnet50", 64)):
        for after, grid in (("layer1", 16), ("layer2", 8)):
            for pool in ("max", "nearest"):
                torch.manual_seed(1)
                dense = masked_residual(
                    _calibrated(getattr(torchvision.models, arch)(num_classes=7), size), after,
                    pool=pool,
                )
                # always sparse: the dense threshold is tested on its own below
                sparse = sparsify(dense, dense_threshold=None, striding_dense_threshold=None)
                found[arch, after, pool] = (dense, sparse, size, grid)
    return found


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("after", ["layer1", "layer2"])
@pytest.mark.parametrize("make", [random_mask, blob_mask])
@pytest.mark.parametrize("pool", ["max", "nearest"])
def test_sparse_equals_dense_masked(pairs, arch, after, make, pool):
    dense, sparse, size, grid = pairs[arch, after, pool]
    assert set(sparse.sparse_report.values()) == {"sparse"}
    for batch in (1, 3):  # per-sample masks differ
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        for i, keep in enumerate(KEEPS):
            mask = make(batch, (grid, grid), keep, seed=i)
            with torch.no_grad(), masking(dense, mask), masking(sparse, mask):
                want, got = dense(x), sparse(x)
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (keep, (got - want).abs().max())


def test_odd_grids_and_timm_blocks():
    model = _calibrated(
        timm.create_model("resnet26", num_classes=3), 72
    )  # layer2 9x9 -> 5x5 -> 3x3
    x = torch.randn(2, 3, 72, 72)
    for pool in ("max", "nearest"):
        dense = masked_residual(copy.deepcopy(model), "layer2", pool=pool)
        sparse = sparsify(dense, dense_threshold=None, striding_dense_threshold=None)
        assert set(sparse.sparse_report.values()) == {"sparse"}
        for keep in (0.2, 0.6):
            mask = blob_mask(2, (9, 9), keep)
            with torch.no_grad(), masking(dense, mask), masking(sparse, mask):
                assert torch.allclose(sparse(x), dense(x), atol=1e-5, rtol=0)


def test_blocks_it_cannot_run_sparsely_run_dense_and_are_named():
    model = _calibrated(timm.create_model("resnet18d", num_classes=3), 64)  # avg-pool downsample
    model.layer4[1].act1 = nn.GELU()
    dense = masked_residual(model, "layer2")
    with pytest.warns(UserWarning, match="these blocks run dense"):
        sparse = sparsify(dense)
    assert sparse.sparse_report["layer3.0"] == "dense: downsample is not a 1x1 conv + BatchNorm"
    assert sparse.sparse_report["layer4.1"] == "dense: activation other than ReLU"
    assert sparse.sparse_report["layer3.1"] == "sparse"
    assert not isinstance(sparse.layer3[0], SparseBlock) and isinstance(
        sparse.layer3[1], SparseBlock
    )
    x = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, (8, 8), 0.4)
    with torch.no_grad(), masking(dense, mask), masking(sparse, mask):
        assert torch.allclose(sparse(x), dense(x), atol=1e-5, rtol=0)


def test_training_mode_is_the_dense_computation_and_weights_refold():
    dense = masked_residual(_calibrated(torchvision.models.resnet18(num_classes=3), 32), "layer2")
    sparse = sparsify(dense)
    x = torch.randn(2, 3, 32, 32)
    mask = blob_mask(2, (4, 4), 0.5)
    sparse.train()
    dense.train()
    with masking(dense, mask), masking(sparse, mask):
        assert torch.equal(sparse(x), dense(x))
    sparse.eval()
    with torch.no_grad():
        sparse.layer3[1].masked.block.conv2.weight.mul_(2)  # the folded weights must follow
        ref = copy.deepcopy(sparse)
        for name, m in list(ref.named_modules()):
            if isinstance(m, SparseBlock):
                parent, _, child = name.rpartition(".")
                setattr(ref.get_submodule(parent), child, m.masked)
        with masking(sparse, mask), masking(ref, mask):
            assert torch.allclose(sparse(x), ref(x), atol=1e-5, rtol=0)


def test_blocks_run_dense_from_the_threshold_and_stay_exact():
    # ours: per block and batch, kept share at the block's grid >= threshold -> dense
    dense = masked_residual(_calibrated(torchvision.models.resnet18(num_classes=3), 64), "layer2")
    sparse = sparsify(dense, dense_threshold=0.5, striding_dense_threshold=0.5)
    defaults = sparsify(dense)
    assert defaults.layer3[1].dense_threshold == DENSE_THRESHOLD
    assert defaults.layer3[0].dense_threshold == STRIDING_DENSE_THRESHOLD
    x = torch.randn(3, 3, 64, 64)
    names = ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    seen_both = set()
    for keep in (0.1, 0.3, 0.5, 0.9):
        mask = random_mask(3, (8, 8), keep, seed=7)
        with torch.no_grad(), masking(dense, mask), masking(sparse, mask):
            assert torch.allclose(sparse(x), dense(x), atol=1e-5, rtol=0)
        m4 = pool_mask(mask.bool(), 2, (4, 4))
        m2 = pool_mask(m4, 2, (2, 2))
        shares = [m4.float().mean(), m4.float().mean(), m2.float().mean(), m2.float().mean()]
        for name, share in zip(names, shares, strict=True):
            ran_dense = sparse.get_submodule(name).last_ran_dense
            assert ran_dense == bool(share >= 0.5), (keep, name, share)
            seen_both.add(ran_dense)
    assert seen_both == {True, False}
    with pytest.raises(ValueError, match=r"^dense_threshold must be None or in \(0, 1\]"):
        sparsify(dense, dense_threshold=1.5)
    with pytest.raises(ValueError, match=r"striding_dense_threshold must be None or in"):
        sparsify(dense, striding_dense_threshold=0)


def test_refusals():
    with pytest.raises(ValueError, match="model has no MaskedBlock"):
        sparsify(torchvision.models.resnet18())
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sparsify("resnet18")
