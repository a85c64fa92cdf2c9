"""One ERSM bias for the command line, the demo and the recipes (issue 17)."""

from types import SimpleNamespace

import torch

from energymask.lightning_modules.app import demo, recipes
from energymask.lightning_modules.app.cli import build_parser
from energymask.lightning_modules.app.settings import ERSM_BIAS_INIT, ERSM_SETTINGS
from energymask.models import Classifier, small_cnn


def test_one_bias_everywhere_and_the_authors_one_flag_away():
    parser = build_parser()
    assert parser.parse_args(["train"]).ersm_bias_init == ERSM_BIAS_INIT == 0.0
    assert parser.parse_args(["train", "--ersm-bias-init", "6.0"]).ersm_bias_init == 6.0
    assert demo.ERSM_SETTINGS is ERSM_SETTINGS and ERSM_SETTINGS["bias_init"] == ERSM_BIAS_INIT
    train = parser._subparsers._group_actions[0].choices["train"]
    help_text = " ".join(train.format_help().split())
    assert "--ersm-bias-init 6.0 for the authors' setting" in help_text
    assert "benchmarks/results/ersm.md" in help_text


def test_recipes_start_from_the_same_bias(monkeypatch):
    monkeypatch.setattr(recipes, "fit", lambda *args, **kwargs: 0.0)  # no training
    baseline = Classifier(small_cnn(1), 64, 10)
    dm = SimpleNamespace(num_classes=10)
    model, _ = recipes.train_frozen_ersm(baseline, dm, recipes.QUICK, seed=0)
    assert torch.all(model.ersm.bias == ERSM_BIAS_INIT)
    model, _ = recipes.train_frozen_ersm(baseline, dm, recipes.QUICK, seed=0, bias_init=6.0)
    assert torch.all(model.ersm.bias == 6.0)


def test_ersm_gate_flag_reaches_the_run_spec():
    from energymask.lightning_modules.app import commands

    parser = build_parser()
    ours = commands._spec(parser.parse_args(["train", "--ersm", "layer2", "--ersm-gate", "hard"]))
    assert ours["ersm"]["gate"] == "hard"
    authors = commands._spec(parser.parse_args(["train", "--ersm", "layer2"]))
    assert authors["ersm"]["gate"] == "soft"
