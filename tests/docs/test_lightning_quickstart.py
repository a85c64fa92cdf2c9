"""examples/lightning_quickstart.py runs under both Lightning packages; README.md shows it."""

from __future__ import annotations

import pytest
import torch

from helpers import ROOT

EXAMPLE = ROOT / "examples" / "lightning_quickstart.py"
IMPORT = "import lightning.pytorch as L  # or: import pytorch_lightning as L\n"


def test_readme_section_shows_the_example():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## With PyTorch Lightning", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text()


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_example_runs(package, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    source = EXAMPLE.read_text()
    assert source.startswith(IMPORT)
    source = source.replace(IMPORT, f"import {package} as L\n", 1)
    namespace = {"__name__": "__main__"}
    exec(compile(source, str(EXAMPLE), "exec"), namespace)
    trainer, model = namespace["trainer"], namespace["model"]
    assert type(trainer).__module__.startswith(package)
    assert type(model).__mro__[1].__module__.startswith(package)  # the user's own base class
    assert 0 < float(trainer.logged_metrics["ersm/features.6/keep_ratio"]) < 1
    assert tuple(namespace["keep"].last_keep.shape) == (4, 16, 16)
    assert not model.training
