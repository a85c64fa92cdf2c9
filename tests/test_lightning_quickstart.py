"""examples/lightning_quickstart.py runs, and is the code shown in README.md."""

from __future__ import annotations

import pathlib
import runpy

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lightning_quickstart.py"


def test_readme_section_shows_the_example():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## With PyTorch Lightning", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text()


def test_example_runs(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(EXAMPLE))
    metrics = namespace["trainer"].logged_metrics
    assert 0 < float(metrics["ersm/features.6/keep_ratio"]) < 1
    assert tuple(namespace["keep"].last_keep.shape) == (4, 16, 16)
    assert not namespace["model"].training
