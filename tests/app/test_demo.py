import json

import pytest

from energymask.lightning_modules.app import demo
from energymask.lightning_modules.app import recipes as ex
from energymask.lightning_modules.app import report as report_module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(out, quick=True, seed=0, progress=False)


def test_writes_report_metrics_and_figures(run):
    out, metrics = run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    report = (out / "report.md").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == sorted([
        "masks_frozen_ersm.png", "masks_ersm_inside.png",
        "energies_frozen_ersm.png", "energies_ersm_inside.png",
        "deletion_frozen_ersm.png", "deletion_ersm_inside.png",
        "occlusion.png", "pbedropout_ema_masks.png", "training_ersm_inside.png",
        "ersm_soft_vs_hard.png",
    ])  # fmt: skip
    for name in figures:
        assert f"](figures/{name})" in report
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "logs" / "metrics.csv").is_file()


def test_metrics_hold_every_model_and_test(run):
    _, metrics = run
    assert metrics["quick"] is True and metrics["budget"] == ex.QUICK.to_dict()
    assert set(metrics["test_accuracy"]) == {"baseline", "frozen_ersm", "ersm_inside",
                                             "ersm_inside_hard", "none", "dropout2d",
                                             "pbedropout"}
    assert set(metrics["models"]) == set(metrics["test_accuracy"])
    assert metrics["models"]["ersm_inside"]["ersm"]["backbone.layer2.layer"]["token_grid"] == \
        [16, 16]
    assert set(metrics["timings"]) == {"training", "evaluation", "figures"}
    assert metrics["machine"]["cpus"] >= 1
    assert all(0.0 <= a <= 1.0 for a in metrics["test_accuracy"].values())
    for key in ("frozen_ersm", "ersm_inside", "ersm_inside_hard"):
        assert set(metrics[key]["deletion"]["auc"]) == set(ex.ORDERINGS)
        assert 0.0 <= metrics[key]["masks"]["iou"] <= 1.0
    for placement in ("random", "object"):
        table = metrics["occlusion"][placement]
        assert set(table) == {"baseline", "frozen_ersm", "ersm_inside", "ersm_inside_hard"}
    # accuracy at f = 0 is the clean test accuracy of the same model
    assert metrics["occlusion"]["random"]["baseline"][0] == pytest.approx(
        metrics["test_accuracy"]["baseline"], abs=0.1)


def test_ours_gate_hard_beside_the_authors_soft_gate(run):
    out, metrics = run
    assert set(metrics["ours"]) == {"ersm_inside_hard"}
    layers = {key: metrics["models"][key]["ersm"]["backbone.layer2.layer"]
              for key in ("ersm_inside", "ersm_inside_hard")}
    assert layers["ersm_inside"]["gate"] == "soft" and layers["ersm_inside_hard"]["gate"] == "hard"
    for name in ("lam", "gamma", "token_grid"):  # the same settings but T
        assert layers["ersm_inside"][name] == layers["ersm_inside_hard"][name]
    assert layers["ersm_inside_hard"]["temperature"] == demo.HARD_GATE["temperature"] == 0.1
    # Ours executes a binary mask: no token is undecided, no entropy.
    assert metrics["ersm_inside_hard"]["masks"]["undecided"] == 0.0
    assert metrics["ersm_inside_hard"]["masks"]["entropy"] == 0.0
    report = (out / "report.md").read_text()
    acc = metrics["test_accuracy"]["ersm_inside_hard"]
    assert f"| ersm_inside_hard (ours) | {acc:.3f} |" in report
    assert "gate hard (ours)" in report and "gate soft (the authors')" in report
    assert "Middle, the authors' soft gate (ersm_inside, T = 1)" in report
    assert "Right, ours, gate='hard' (ersm_inside_hard, T = 0.1)" in report


def test_report_table_shows_the_numbers(run):
    out, metrics = run
    report = (out / "report.md").read_text()
    for name, acc in metrics["test_accuracy"].items():
        assert f"| {report_module.label(name)} | {acc:.3f} |" in report
    auc = metrics["ersm_inside"]["deletion"]["auc"]["energy"]
    assert f"{auc:.3f}" in report
    for head in ("## Claims, as this run measured them", "## Metrics", "## Models and settings",
                 "## Run", "*Figure 1.*"):
        assert head in report


def test_lightning_log_levels_are_restored():
    import logging

    logger = logging.getLogger("lightning.pytorch")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        with demo._lightning_warnings_only():
            assert logger.level == logging.WARNING
            assert logging.getLogger("pytorch_lightning").level == logging.WARNING
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)
