import pytest
import torch
from torch import nn

from energymask.dropblock import DropBlock2d
from energymask.ersm import EnergyMask2d, energy_mask_layers
from energymask.evaluation import accuracy
from energymask.lightning_modules.app import recipes as ex
from energymask.pbedropout import PBEDropout2d

TINY = ex.Budget(num_train=64, num_val=32, num_test=32, epochs=1, ersm_epochs=1,
                 batch_size=32, deletion_steps=3, deletion_samples=16)  # fmt: skip


@pytest.fixture(scope="module")
def dm():
    return ex.datamodule(TINY, seed=0)


@pytest.fixture(scope="module")
def baseline(dm):
    return ex.train_baseline(dm, TINY, seed=0, progress=False)


def test_budget_is_plain_data():
    assert ex.Budget().to_dict()["num_train"] == 3000
    assert ex.QUICK.epochs == 1 and ex.QUICK.num_train < ex.Budget().num_train


def test_datamodule_sizes_and_object_masks(dm):
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (64, 32, 32)
    x, y, obj = next(iter(ex.eval_loader(dm)))
    assert x.shape == (32, 1, 64, 64) and obj.shape[-2:] == (64, 64) and y.dtype == torch.long


def test_eval_loader_takes_first_samples(dm):
    loader = ex.eval_loader(dm, 5)
    (x, y, _), = list(loader)
    assert torch.equal(x, torch.stack([dm.test_set[i][0] for i in range(5)]))


def test_baseline_is_trained_and_in_eval_mode(baseline, dm):
    model, acc = baseline
    assert not model.training and 0.0 <= acc <= 1.0
    assert acc == pytest.approx(accuracy(model, ex.eval_loader(dm)))


def test_same_seed_same_model(dm):
    a, _ = ex.train_baseline(dm, TINY, seed=3, progress=False)
    b, _ = ex.train_baseline(dm, TINY, seed=3, progress=False)
    c, _ = ex.train_baseline(dm, TINY, seed=4, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                         strict=True))


def test_frozen_ersm_trains_a_copy_and_keeps_backbone(baseline, dm):
    model, _ = baseline
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen, acc = ex.train_frozen_ersm(model, dm, TINY, seed=0, progress=False, bias_init=0.0)
    assert isinstance(frozen.ersm, EnergyMask2d) and 0.0 <= acc <= 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the baseline itself is untouched
    for k, v in frozen.backbone.state_dict().items():
        assert torch.equal(v, before[f"backbone.{k}"]), k  # frozen: same weights, same BN stats
    assert frozen.ersm.bias.detach().abs().sum() > 0  # ERSM was trained from bias 0


def test_ersm_inside_inserts_one_layer(dm):
    model, _ = ex.train_ersm_inside(dm, TINY, seed=0, progress=False)
    layers = energy_mask_layers(model)
    assert list(layers) == ["backbone.layer2.layer"]


@pytest.mark.parametrize("kind, layer_type", [("dropout", nn.Dropout), ("dropout2d", nn.Dropout2d),
                                              ("dropblock", DropBlock2d),
                                              ("pbedropout", PBEDropout2d)])
def test_regularised_inserts_the_regulariser(dm, kind, layer_type):
    model, acc = ex.train_regularised(dm, TINY, seed=0, kind=kind, progress=False)
    found = [m for m in model.modules() if type(m) is layer_type]
    assert len(found) == 1 and 0.0 <= acc <= 1.0
    if kind == "pbedropout":
        assert found[0].ema_mask.numel() > 0  # it ran and kept its EMA masks


def test_regularised_none_has_no_regulariser(dm):
    model, _ = ex.train_regularised(dm, TINY, seed=0, kind="none", progress=False)
    assert not any(isinstance(m, nn.Dropout | nn.Dropout2d | DropBlock2d | PBEDropout2d)
                   for m in model.modules())


def test_regularised_rejects_unknown_kind(dm):
    with pytest.raises(ValueError, match=r"kind must be one of .*but got 'dropconnect'"):
        ex.train_regularised(dm, TINY, seed=0, kind="dropconnect")


def test_ersm_scores_and_deletion(baseline, dm):
    frozen, _ = ex.train_frozen_ersm(baseline[0], dm, TINY, seed=0, progress=False)
    result = ex.evaluate_ersm(frozen, dm, TINY, seed=0, progress=False)
    masks = result["masks"]
    assert set(masks) == {"iou", "pointing", "keep_ratio", "entropy", "hard_sparsity",
                          "relative_sparsity", "keep_gini", "keep_contrast", "undecided",
                          "soft_undecided"}
    assert all(0.0 <= v <= 1.0 for k, v in masks.items() if k != "keep_contrast")
    assert -1.0 <= masks["keep_contrast"] <= 1.0
    deletion = result["deletion"]
    assert set(deletion["auc"]) == set(ex.ORDERINGS)
    assert deletion["num_samples"] == TINY.deletion_samples
    assert len(deletion["steps"]) == TINY.deletion_steps


def test_occlusion_side_by_side(baseline, dm):
    out = ex.occlusion({"a": baseline[0], "b": baseline[0]}, dm, seed=0, progress=False)
    assert set(out) == {"random", "object"}
    for placement, table in out.items():
        assert table["a"] == table["b"]
        assert len(table["a"]) == len(ex.OCCLUSION_PLACEMENTS[placement])
    assert ex.OCCLUSION_PLACEMENTS["object"] == ex.OBJECT_OCCLUSION_FRACTIONS
    assert out["random"]["a"][0] == pytest.approx(accuracy(baseline[0], ex.eval_loader(dm)))


def test_spurious_datamodule_passes_its_strength():
    dm = ex.datamodule(TINY, seed=0, spurious=True, spurious_strength=0.5)
    assert dm.spurious and dm.spurious_strength == 0.5
    with pytest.raises(ValueError, match="spurious_strength"):
        ex.datamodule(TINY, seed=0, spurious=True, spurious_strength=1.5)
