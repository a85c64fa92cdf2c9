"""The commands behind the command line: the authors' protocol on a CUB-like folder.

The end-to-end command-line tests (train -> evaluate -> plot, run-folder refusals,
Ctrl-C and --resume) are in test_cli.py.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torchvision
from PIL import Image

from energymask.lightning_modules.app.cli import main


def write_cub_like(root, classes=("001.Black_footed_Albatross", "002.Laysan_Albatross"),
                   per_class=6, side=20):
    """``root/images/<class>/<name>.png`` as in CUB_200_2011 (Oxford Pets: one folder per breed)."""
    gen = np.random.default_rng(0)
    for c in classes:
        (root / "images" / c).mkdir(parents=True)
        for k in range(per_class):
            pixels = gen.integers(0, 256, size=(side, side + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / c / f"{c.split('.')[1]}_{k:04d}.png")
    return root / "images"


def test_authors_protocol_on_a_cub_like_folder(tmp_path, capsys):
    """Frozen torchvision ResNet-18 with local weights, ERSM before the head (CPU, tiny)."""
    images = write_cub_like(tmp_path / "CUB_200_2011")
    torch.manual_seed(0)
    published = torchvision.models.resnet18(weights=None)
    torch.save(published.state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "run"
    argv = ["train", "--data", "image-folder", "--data-dir", images, "--image-size", "32",
            "--backbone", "torchvision:resnet18", "--weights", tmp_path / "resnet18.pth",
            "--frozen-backbone", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--accelerator", "cpu", "--out", out]
    assert main([str(a) for a in argv]) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["model"]["frozen_backbone"] and spec["model"]["num_classes"] == 2
    assert spec["ersm"]["bias_init"] == 0.0 and spec["ersm"]["layers"] == []
    trained = torch.load(out / "model.ckpt", weights_only=True)["state_dict"]
    for k, v in published.state_dict().items():  # the backbone stayed the published one
        if not k.startswith("fc."):
            assert torch.equal(trained[f"model.backbone.{k}"], v), k
    assert "model.ersm.bias" in trained
    argv = ["evaluate", "--run", out, "--steps", "2", "--fractions", "0", "0.5",
            "--patch-size", "4", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert set(result["deletion"]) == {"ersm"} and set(result["occlusion"]) == {"random"}
    assert "deletion AUC at ersm" in capsys.readouterr().out
