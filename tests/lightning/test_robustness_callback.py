import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from energymask.deletion import deletion_curve
from energymask.evaluation import evaluate
from energymask.lightning_modules.robustness_callback import RobustnessTests, shard_indices
from energymask.occlusion import occlusion_robustness

import _robustness_run
from _robustness_run import callback, run, tiny_module, tiny_test_loader

SCRIPT = Path(_robustness_run.__file__)  # run again per rank by Lightning's ddp launcher


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, lightning.pytorch."""
    out = tmp_path_factory.mktemp("one") / "one.json"
    run("lightning.pytorch", "auto", 1, str(out))
    return json.loads(out.read_text())


def _trainer(package, tests, **kwargs):
    return package.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_checkpointing=False, enable_model_summary=False,
                           callbacks=[tests], **kwargs)


def test_one_process_is_the_plain_functions_on_batches_of_one(one_process):
    # batch i of size 1 is image i: the plain functions' seed + batch index is the callback's
    # seed + dataset index, so every curve (random ones too) must be equal
    r = one_process["results"]
    net = tiny_module().model.eval()
    x, y, m = tiny_test_loader().dataset.tensors
    single = DataLoader(tiny_test_loader().dataset, batch_size=1)
    d = deletion_curve(net, single, orderings=r["deletion"]["1"]["settings"]["orderings"], steps=5)
    assert r["deletion"]["1"]["curves"] == d.curves and r["deletion"]["1"]["auc"] == d.auc
    for placement in ("random", "object"):
        o = occlusion_robustness(net, single, patch_size=2, placement=placement, fill="noise")
        assert r["occlusion"][placement]["accuracy"] == o.accuracy
    e = evaluate(net, tiny_test_loader())
    assert r["accuracy"] == e.accuracy and r["num_samples"] == e.num_samples == len(y)
    # the same means, summed in another order (math.fsum here)
    assert r["mask_quality"]["1"] == pytest.approx(e.masks["1"], rel=1e-12, nan_ok=True)
    assert set(r["mask_quality"]["1"]) >= {"iou", "pointing", "keep_contrast"}
    # and logged through the Trainer
    assert one_process["metrics"]["robustness/deletion/1/auc_energy"] == pytest.approx(
        d.auc["energy"], rel=1e-6)


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_result_does_not_depend_on_the_batch_size(package, one_process):
    # other batches, same images: identical results (a shard is just other batches)
    tests = callback()
    module = pytest.importorskip(package)
    loader = DataLoader(tiny_test_loader().dataset, batch_size=3)
    _trainer(module, tests).test(tiny_module(), dataloaders=loader, verbose=False)
    assert tests.results.to_dict() == one_process["results"]


@pytest.mark.parametrize("package,strategy", [("lightning.pytorch", "ddp"),
                                              ("pytorch_lightning", "ddp_spawn")])
def test_two_processes_equal_one_bit_for_bit(package, strategy, one_process, tmp_path):
    out = tmp_path / "two.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--package", package, "--strategy",
                           strategy, "--devices", "2", str(out)], timeout=600, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    two = json.loads(out.read_text())
    assert two["world_size"] == 2
    assert two["results"] == one_process["results"]  # 11 images, not 10 + a padded duplicate
    assert two["metrics"] == one_process["metrics"]


def test_shard_indices_drop_the_padded_duplicate():
    data = TensorDataset(torch.zeros(11))
    for rank, expected in ((0, [0, 2, 4, 6, 8, 10]), (1, [1, 3, 5, 7, 9, 0])):
        loader = DataLoader(data, batch_size=4,
                            sampler=DistributedSampler(data, 2, rank, shuffle=False))
        indices, valid = shard_indices(loader, 2)
        assert indices.tolist() == expected
        assert valid.tolist() == [True] * 5 + [rank == 0]
    drop = DataLoader(data, sampler=DistributedSampler(data, 2, 0, drop_last=True))
    with pytest.raises(ValueError, match="drop_last=True"):
        shard_indices(drop, 2)


def test_validate_runs_and_fit_does_not():
    tests = RobustnessTests(deletion={"orderings": "energy", "steps": 3}, occlusion=False,
                            model="model")
    trainer = _trainer(L, tests, max_epochs=1, limit_train_batches=1)
    loader = tiny_test_loader()
    trainer.fit(tiny_module(), train_dataloaders=loader, val_dataloaders=loader)
    assert tests.results is None  # the validation inside fit is not evaluated
    trainer.validate(tiny_module(), dataloaders=tiny_test_loader(), verbose=False)
    assert tests.results.evaluation.num_samples == 11
    assert list(tests.results.deletion["1"].curves) == ["energy"]
    assert tests.results.occlusion == {}


def test_module_without_the_model_attribute_is_refused():
    trainer = _trainer(pl, RobustnessTests(model="net"))
    with pytest.raises(ValueError, match=r"model must name a module attribute.*\.net is NoneType"):
        trainer.test(tiny_module(), dataloaders=tiny_test_loader(), verbose=False)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(deletion="yes"), TypeError, "deletion must be True, False or a dict"),
    (dict(deletion={"step": 3}), TypeError, r"deletion options must be among .*\['step'\]"),
    (dict(occlusion={"fractions": [2.0]}), ValueError, r"fractions must lie in \[0, 1\]"),
    (dict(occlusion={"placement": []}), ValueError, "must name at least one placement"),
    (dict(occlusion={"placement": "corner"}), ValueError, "placement must be one of"),
    (dict(seed=1.5), TypeError, "seed must be an int, but got 1.5"),
    (dict(stages="test"), ValueError, r"stages must hold some of \['test', 'validate'\]"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        RobustnessTests(**kwargs)


def test_sharding_strategies_are_refused():
    class FSDPStrategy:  # stands for Lightning's: only its name is read
        pass

    trainer = SimpleNamespace(state=SimpleNamespace(fn="test"), sanity_checking=False,
                              strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="strategy FSDPStrategy shards it; use ddp, ddp_spawn"):
        RobustnessTests().on_test_epoch_start(trainer, tiny_module())
