"""report.py: every section present, verdicts that follow the numbers, seeds, settings."""

from __future__ import annotations

import copy

import pytest
import torch

from energymask.ersm import EnergyMask2d
from energymask.lightning_modules.app import report
from energymask.models import Classifier
from energymask.pbedropout import PBEDropout2d

FIGURES = ["masks_ersm_inside.png", "energies_ersm_inside.png", "deletion_ersm_inside.png",
           "occlusion.png", "pbedropout_ema_masks.png", "training_ersm_inside.png"]


def _deletion(energy: float, magnitude: float, protocol: str | None = None) -> dict:
    settings = {"protocol": protocol} if protocol else {}
    return {"mode": "deletion", "steps": [0, 8, 16], "fractions": [0.0, 0.5, 1.0],
            "curves": {"energy": [0.9, 0.8, 0.1], "magnitude": [0.9, 0.7, 0.1]},
            "auc": {"energy": energy, "magnitude": magnitude}, "num_tokens": 16,
            "num_samples": 64, "settings": settings}


def _masks(hard_sparsity: float, pointing: float) -> dict:
    return {"iou": 0.2, "pointing": pointing, "keep_ratio": 0.4, "entropy": 0.9,
            "hard_sparsity": hard_sparsity, "keep_contrast": 0.1, "spread": 0.3}


def metrics() -> dict:
    return {
        "seed": 0, "quick": False, "num_classes": 10,
        "budget": {"num_train": 3000, "num_val": 500, "num_test": 1000, "epochs": 6,
                   "ersm_epochs": 4},
        "ersm_settings": {"lam": 1e-3, "gamma": 1e-3, "temperature": 1.0, "bias_init": 0.0},
        "test_accuracy": {"baseline": 0.99, "frozen_ersm": 0.95, "ersm_inside": 0.985,
                          "none": 0.80, "dropout2d": 0.70, "pbedropout": 0.805},
        "frozen_ersm": {"masks": _masks(1.0, 0.2), "deletion": _deletion(0.93, 0.96)},
        "ersm_inside": {"masks": _masks(0.7, 0.9), "deletion": _deletion(0.95, 0.90)},
        "occlusion_fractions": [0.0, 0.5],
        "occlusion_patch_size": 8,
        "occlusion": {
            "random": {"baseline": [0.99, 0.5], "frozen_ersm": [0.95, 0.3],
                       "ersm_inside": [0.985, 0.6]},
            "object": {"baseline": [0.99, 0.2], "frozen_ersm": [0.95, 0.2],
                       "ersm_inside": [0.985, 0.205]},
        },
        "models": {"ersm_inside": {"parameters": 1234, "ersm": {"backbone.layer2": {
            "token_grid": [16, 16], "token_size": 1, "lam": 1e-3, "gamma": 1e-3,
            "temperature": 1.0, "learned_bias": 0.12}}},
            "pbedropout": {"parameters": 99, "pbedropout": {"backbone.layer2": {
                "p": 0.1, "patch_size": 2, "patch_grid": [8, 8], "beta": 0.1,
                "generations": 2}}}},
        "timings": {"training": 200.0, "evaluation": 80.0, "figures": 9.0},
        "seconds": 289.0,
        "machine": {"cpus": 2, "torch_threads": 2, "torch": "2.x", "python": "3.12",
                    "platform": "Linux", "device": "cpu"},
    }


def _verdict(m: dict, claim: str, subject: str) -> report.Verdict:
    (v,) = [v for v in report.verdicts(m) if v.claim.startswith(claim) and v.subject == subject]
    return v


def test_every_section_and_figure_caption():
    text = report.render(metrics(), FIGURES)
    for head in ("# energymask demo report", "## Claims, as this run measured them",
                 "## Metrics", "## Models and settings", "## Test accuracy", "## ERSM masks",
                 "## Deletion test", "## Structured occlusion", "## Figures", "## Run"):
        assert head in text, head
    for i, name in enumerate(FIGURES, start=1):
        assert f"![{name}](figures/{name})" in text
        assert f"*Figure {i}.* {report.caption(name, metrics())}" in text
    assert "2 CPUs, 2 torch threads, torch 2.x" in text
    assert "| training | 200 |" in text
    assert "token grid 16x16" in text and "bias 0.0 at init, 0.12 learned" in text
    assert "PB-EDropout at `backbone.layer2`: p 0.1" in text


def test_metric_definitions_cover_every_reported_key():
    text = report.render(metrics(), [])
    for key in ("test accuracy", "deletion AUC", "occlusion accuracy", "keep_ratio",
                "hard_sparsity", "iou", "pointing", "entropy"):
        assert f"| {key} | {report.METRIC_DEFINITIONS[key]} |" in text
    # A mask metric the table does not define yet is still listed and tabled.
    assert "| spread | see energymask.mask_quality |" in text
    assert "| ersm_inside | 0.400 | 0.700 | 0.200 | 0.900 | 0.900 | 0.100 | 0.300 |" in text


def test_no_dropout_baseline_beside_pbedropout():
    text = report.render(metrics(), [])
    assert "| none | 0.800 | — |" in text
    assert "| pbedropout | 0.805 | +0.005 vs none |" in text
    assert "| dropout2d | 0.700 | -0.100 vs none |" in text


#: (claim prefix, subject, verdict) on :func:`metrics`.
EXPECTED = [
    ("ERSM preserves accuracy", "ersm_inside", "held"),
    ("ERSM preserves accuracy", "frozen_ersm", "did not hold"),
    ("ERSM masks become sparse", "ersm_inside", "held"),
    ("ERSM masks become sparse", "frozen_ersm", "did not hold"),
    ("ERSM masks find the object", "ersm_inside", "held"),
    ("ERSM masks find the object", "frozen_ersm", "did not hold"),
    ("ERSM is robust to occlusion (random", "ersm_inside", "held"),
    ("ERSM is robust to occlusion (random", "frozen_ersm", "did not hold"),
    ("ERSM is robust to occlusion (object", "ersm_inside", "level"),
    ("Energy ranks", "ersm_inside", "held"),
    ("Energy ranks", "frozen_ersm", "did not hold"),
    ("PB-EDropout beats standard", "pbedropout vs dropout2d", "held"),
    ("PB-EDropout regularises", "pbedropout vs none", "level"),
    ("Frozen PB-EDropout", "pbedropout_frozen", "not measured"),
]


@pytest.mark.parametrize(("claim", "subject", "verdict"), EXPECTED)
def test_verdicts_follow_the_numbers(claim, subject, verdict):
    assert _verdict(metrics(), claim, subject).verdict == verdict


def test_verdicts_change_with_the_numbers():
    m = metrics()
    m["ersm_inside"]["masks"]["keep_contrast"] = -0.05  # points at it, keeps it less
    assert _verdict(m, "ERSM masks find the object", "ersm_inside").verdict == "did not hold"
    # Change the numbers and the verdicts change with them.
    m["test_accuracy"]["pbedropout"] = 0.85
    m["ersm_inside"]["deletion"]["auc"]["energy"] = 0.80
    m["test_accuracy"]["pbedropout_frozen"] = 0.70
    assert _verdict(m, "PB-EDropout regularises", "pbedropout vs none").verdict == "held"
    assert _verdict(m, "Energy ranks", "ersm_inside").verdict == "did not hold"
    assert _verdict(m, "Frozen PB-EDropout", "pbedropout_frozen vs none").verdict == \
        "did not hold"
    text = report.render(m, [])
    assert ("| PB-EDropout regularises (beats no dropout) | pbedropout vs none | "
            "**seed 0 only: held** |") in text


def test_protocols_named_in_deletion_section_and_claims():
    m = metrics()
    m["ersm_inside"]["deletion"] = {"binary": _deletion(0.95, 0.9, "binary"),
                                    "soft": _deletion(0.90, 0.95, "soft")}
    assert _verdict(m, "Energy ranks tokens better than magnitude (binary",
                    "ersm_inside").verdict == "held"
    assert _verdict(m, "Energy ranks tokens better than magnitude (soft",
                    "ersm_inside").verdict == "did not hold"
    text = report.render(m, [])
    assert "| ersm_inside | soft | 64 | 0.900 | 0.900 | 0.950 |" in text
    assert report.deletion_results({"deletion": _deletion(1, 1, "soft")}).keys() == {"soft"}
    top_level = {**_deletion(1, 1), "protocol": "soft"}
    assert report.deletion_results({"deletion": top_level}).keys() == {"soft"}
    assert report.deletion_results({}) == {}


def test_seed_spread():
    m = metrics()
    m["seeds"] = [0, 1, 2]
    m["test_accuracy"]["none"] = [0.80, 0.70, 0.75]
    m["test_accuracy"]["pbedropout"] = [0.81, 0.69, 0.77]
    m["test_accuracy"]["dropout2d"] = [0.7, 0.7, 0.7]
    text = report.render(m, [])
    assert "seeds 0, 1, 2 (mean ± std over seeds)" in text
    assert "| none | 0.750 ± 0.041 | — |" in text
    v = _verdict(m, "PB-EDropout regularises", "pbedropout vs none")
    assert v.verdict == "level" and "ahead on 2 of 3 seeds" in v.evidence
    m["occlusion"]["random"] = {k: [[a, b - 0.1 * s] for s in range(3)]
                                for k, (a, b) in m["occlusion"]["random"].items()}
    m["test_accuracy"]["baseline"] = [0.99] * 3
    m["test_accuracy"]["ersm_inside"] = [0.985] * 3
    m["test_accuracy"]["frozen_ersm"] = [0.95] * 3
    v = _verdict(m, "ERSM is robust to occlusion (random", "ersm_inside")
    assert v.verdict == "held" and "ahead on 3 of 3 seeds" in v.evidence
    assert "| ersm_inside | 0.985 ± 0.000 | 0.500 ± 0.082 |" in report.render(m, [])


def test_seed_counts_must_match():
    m = metrics()
    m["test_accuracy"]["none"] = [0.8, 0.7]
    with pytest.raises(ValueError, match="as many seeds, but got 1 and 2"):
        report.verdicts(m)


def test_quick_run_is_flagged():
    m = metrics()
    m["quick"] = True
    assert "too small for the numbers to mean anything" in report.render(m, [])
    assert "too small" not in report.render(metrics(), [])


def test_model_settings_and_machine(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), EnergyMask2d(4, bias_init=0.5))
    net.out_channels = 4
    pb_net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1),
                                 PBEDropout2d(4, p=0.2, patch_size=2))
    pb_net.out_channels = 4
    models = {"ersm": Classifier(net, 4, 3), "pb": Classifier(pb_net, 4, 3)}
    models["pb"].train()
    models["pb"](torch.rand(2, 1, 8, 8))  # allocates the EMA mask
    for m in models.values():
        m.eval()
    s = report.model_settings(models, torch.rand(2, 1, 8, 8))
    ersm = s["ersm"]["ersm"]["backbone.1"]
    assert ersm["token_grid"] == [8, 8] and ersm["learned_bias"] == pytest.approx(0.5)
    assert ersm["gate"] == "soft"
    pb = s["pb"]["pbedropout"]["backbone.1"]
    assert pb["p"] == 0.2 and pb["patch_grid"] == [4, 4]
    assert s["ersm"]["parameters"] == sum(p.numel() for p in models["ersm"].parameters())
    info = report.machine()
    assert info["torch"] == torch.__version__ and info["torch_threads"] >= 1
    path = report.write_report(tmp_path, copy.deepcopy(metrics()), [])
    assert path.read_text() == report.render(metrics(), [])


def test_ours_labelled_in_every_table_verdict_and_caption():
    m = metrics()
    hard_masks = {**_masks(0.8, 0.95), "keep_ratio": 0.2}
    m["test_accuracy"]["ersm_inside_hard"] = 0.985
    m["ersm_inside_hard"] = {"masks": hard_masks, "deletion": _deletion(0.96, 0.91)}
    for placement, curve in (("random", [0.98, 0.55]), ("object", [0.98, 0.21])):
        m["occlusion"][placement]["ersm_inside_hard"] = curve
    m["models"]["ersm_inside_hard"] = {"parameters": 1234, "ersm": {"backbone.layer2": {
        "token_grid": [16, 16], "token_size": 1, "lam": 1e-3, "gamma": 1e-3,
        "temperature": 0.1, "gate": "hard", "learned_bias": 0.3}}}
    text = report.render(m, ["ersm_soft_vs_hard.png"])
    assert "| ersm_inside_hard (ours) | 0.985 | -0.005 vs baseline |" in text
    assert "| ersm_inside_hard (ours) | 0.200 | 0.800 | 0.200 | 0.950 |" in text  # masks
    assert "| ersm_inside_hard (ours) | binary | 64 | 0.900 | 0.960 | 0.910 |" in text
    assert "| ersm_inside_hard (ours) | 0.980 | 0.550 |" in text  # random occlusion
    assert "gate hard (ours)" in text and "| ersm_inside_hard (ours) | ours, not the authors'" \
        in text
    assert "gate soft (the authors')" in text  # ersm_inside
    assert _verdict(m, "ERSM preserves accuracy", "ersm_inside_hard (ours)").verdict == "held"
    assert _verdict(m, "ERSM masks become sparse", "ersm_inside_hard (ours)").verdict == "held"
    cap = report.caption("ersm_soft_vs_hard.png", m)
    assert "the authors' soft gate (ersm_inside" in cap and "mean keep 0.400" in cap
    assert "ours, gate='hard' (ersm_inside_hard, T = 0.1)" in cap and "mean keep 0.200" in cap
    assert f"*Figure 1.* {cap}" in text
    assert "mean keep" not in report.caption("ersm_soft_vs_hard.png", {})  # not measured


def test_one_seed_verdicts_read_as_such():
    text = report.render(metrics(), [])
    assert "One seed stands behind every verdict here" in text
    assert "| ERSM preserves accuracy | ersm_inside | **seed 0 only: held** |" in text
    assert "| pbedropout_frozen | **not measured** |" in text
    no_seed = {k: v for k, v in metrics().items() if k != "seed"}
    assert "**one seed only: held**" in report.render(no_seed, [])


def test_several_seeds_counted_in_each_verdict():
    m = metrics()
    m["seeds"] = [0, 1, 2]
    for key, acc in m["test_accuracy"].items():
        m["test_accuracy"][key] = [acc] * 3
    text = report.render(m, [])
    assert "Differences are means over 3 seeds" in text
    assert "| ERSM preserves accuracy | ersm_inside | **held (3 seeds)** |" in text
    # The mask claims rest on the masks' own numbers: still one seed here.
    assert "| ERSM masks become sparse | ersm_inside | **one seed only: held** |" in text
    assert _verdict(m, "ERSM preserves accuracy", "ersm_inside").num_seeds == 3


def test_occlusion_at_chance_for_every_model_cannot_separate():
    m = metrics()
    m["occlusion"]["object"] = {"baseline": [0.99, 0.09], "frozen_ersm": [0.95, 0.14],
                                "ersm_inside": [0.985, 0.12]}
    v = _verdict(m, "ERSM is robust to occlusion (object", "ersm_inside")
    assert v.verdict == "cannot separate the models"
    assert "within 0.05 of chance (0.10) at every f > 0" in v.evidence
    m["occlusion"]["object"]["frozen_ersm"] = [0.95, 0.16]  # one model above chance
    assert _verdict(m, "ERSM is robust to occlusion (object", "ersm_inside").verdict == "held"


def test_occlusion_placements_at_their_own_fractions():
    m = metrics()
    m["occlusion_placements"] = {"random": [0.0, 0.5], "object": [0.0, 0.02, 0.05]}
    m["occlusion"]["object"] = {"baseline": [0.99, 0.8, 0.5], "frozen_ersm": [0.95, 0.7, 0.4],
                                "ersm_inside": [0.985, 0.85, 0.6]}
    text = report.render(m, [])
    assert "| model | f = 0.0 | f = 0.02 | f = 0.05 |" in text
    assert "| ersm_inside | 0.985 | 0.850 | 0.600 |" in text
    v = _verdict(m, "ERSM is robust to occlusion (object", "ersm_inside")
    assert v.verdict == "held" and "+0.075" in v.evidence  # mean of +0.05 and +0.10
