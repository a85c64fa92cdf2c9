import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from energymask import Classifier, EnergyMask2d, insert_after, small_cnn
from energymask.evaluation import (
    DEFAULT_FRACTIONS,
    ORDERINGS,
    accuracy,
    auc,
    eval_mode,
    evaluate,
    progress_bar,
    split_batch,
    to_model_device,
)
from energymask.mask_quality import mask_quality


def _model():
    torch.manual_seed(0)
    m = Classifier(small_cnn(1, (4, 8, 8)), 8, 3)
    insert_after(m, ["backbone.layer2"], lambda n, c: EnergyMask2d(c, bias_init=0.0))
    return m.eval()


def _data(n=10, with_mask=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 32, 32, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    m = torch.zeros(n, 1, 32, 32)
    m[:, :, 8:24, 8:24] = 1
    return (x, y, m) if with_mask else (x, y)


def test_constants():
    assert ORDERINGS == ("energy", "magnitude", "random", "gradcam", "feature_ablation")
    assert DEFAULT_FRACTIONS == (0.0, 0.1, 0.25, 0.5)


def test_auc_hand_computed():
    assert auc([0, 0.5, 1], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert auc([0, 0.25, 1], [1.0, 1.0, 0.0]) == pytest.approx(0.25 + 0.375)
    # normalised by the span: the mean level of the curve
    assert auc([0.0, 0.5], [1.0, 1.0]) == pytest.approx(1.0)
    assert auc([0.3], [0.7]) == 0.7


def test_auc_errors():
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of points, but got 0 and 0"):
        auc([], [])
    with pytest.raises(ValueError, match="but got 2 and 3"):
        auc([0, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="must be finite, but got NaN or Inf"):
        auc([0, 1], [1, math.nan])
    with pytest.raises(ValueError, match="fractions must increase strictly"):
        auc([0, 0.5, 0.5], [1, 1, 1])


def test_accuracy_and_evaluate_match_a_manual_count():
    model = _model()
    x, y, m = _data()
    with torch.no_grad():
        want = (model(x).argmax(-1) == y).double().mean().item()
        model(x)
    keep = model.get_submodule("backbone.layer2.layer").last_keep
    batches = DataLoader(TensorDataset(x, y, m), batch_size=4)
    assert accuracy(model, batches) == pytest.approx(want)
    ev = evaluate(model, batches)
    assert ev.accuracy == pytest.approx(want) and ev.num_samples == 10
    scores = ev.masks["backbone.layer2.layer"]
    # the per-sample mean over three batches (4, 4, 2) equals the whole-set scores
    want_scores = mask_quality(keep, m)
    want_scores["soft_undecided"] = want_scores["undecided"]  # the soft gate executes its keep
    assert set(scores) == set(want_scores) and "iou" in scores
    for k, v in want_scores.items():
        assert scores[k] == pytest.approx(v, abs=1e-6), k
    # without object masks: the scores that need none
    plain = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert "iou" not in plain.masks["backbone.layer2.layer"]
    assert plain.masks["backbone.layer2.layer"]["keep_ratio"] == pytest.approx(
        want_scores["keep_ratio"], abs=1e-6)
    assert ev.to_dict()["num_samples"] == 10


def test_empty_batches_skipped_and_no_sample_is_an_error():
    model = _model()
    x, y, m = _data()
    full = [(x[:6], y[:6], m[:6]), (x[:0], y[:0], m[:0]), (x[6:], y[6:], m[6:])]
    assert accuracy(model, full) == accuracy(model, [(x, y, m)])
    for loader in ([], [(x[:0], y[:0])]):
        with pytest.raises(ValueError, match="loader yielded no sample"):
            accuracy(model, loader)
        with pytest.raises(ValueError, match="loader yielded no sample"):
            evaluate(model, loader)


def test_split_batch():
    x, y = torch.zeros(2, 1), torch.zeros(2)
    assert split_batch((x, y))[2] is None
    assert split_batch([x, y, x])[2] is x
    with pytest.raises(ValueError, match=r"\(x, y, \.\.\.\) batches with labels, but got a tensor"):
        split_batch(x)
    with pytest.raises(ValueError, match="but got dict"):
        split_batch({"x": x})


def test_eval_mode_restores_and_warns():
    model = nn.Sequential(nn.Dropout()).train()
    with pytest.warns(UserWarning, match="model was in train mode"):
        with eval_mode(model):
            assert not model.training
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_progress_bar(capsys):
    with progress_bar(3, "quiet", progress=False) as bar:
        bar.update()
    with progress_bar(None, "no total") as bar:  # total unknown: nothing by default
        bar.update()
    assert capsys.readouterr().err == ""
    with progress_bar(3, "shown", progress=True) as bar:
        bar.update(3)
    assert "shown" in capsys.readouterr().err


def test_batch_scores_per_image():
    from energymask.evaluation import batch_scores
    from energymask.mask_quality import layer_mask_scores

    torch.manual_seed(0)
    model = Classifier(small_cnn(1, (4, 8)), 8, 3)
    insert_after(model, ["backbone.layer1"], lambda n, c: EnergyMask2d(c, bias_init=0.0))
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2])
    obj = (torch.rand(3, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        hits, scores = batch_scores(model.eval(), {"l": model.backbone.layer1.layer}, x, y, obj)
        expected = layer_mask_scores(model.backbone.layer1.layer, obj)
        assert torch.equal(hits, model(x).argmax(-1) == y)
    assert set(scores["l"]) == set(expected) and "iou" in expected
    assert all(torch.equal(scores["l"][k], v) for k, v in expected.items() if k != "keep_contrast")


def test_to_model_device_follows_the_first_parameter_or_buffer():
    x = torch.ones(2, 3)
    assert to_model_device(nn.Linear(3, 2, device="meta"), x).device.type == "meta"
    assert to_model_device(nn.ReLU(), x) is x  # no parameters: cpu, already there
