"""The core imports and runs with torch alone; a missing extra is named in the error."""

import subprocess
import sys
import textwrap

import pytest

from energymask._extras import require

# Every optional package, hidden from the import system in a fresh interpreter.
HIDDEN = ("lightning", "pytorch_lightning", "torchmetrics", "captum", "matplotlib", "sklearn",
          "PIL", "numpy", "scipy", "torchvision", "timm", "tensorboard", "triton")

HIDE = textwrap.dedent(f"""
    import sys
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HIDDEN!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)")
    sys.meta_path.insert(0, Hide())
""")


def run_hidden(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_core_with_torch_alone():
    res = run_hidden("""
        import torch
        import energymask
        from energymask import EnergyMask2d, PBEDropout2d, deletion_curve
        layer = EnergyMask2d(4, bias_init=0.0)
        y = layer(torch.randn(2, 4, 6, 6))
        drop = PBEDropout2d(4, p=0.2, patch_size=2, seed=0)
        z = drop(torch.randn(2, 4, 8, 8))
        assert y.shape == (2, 4, 6, 6) and z.shape == (2, 4, 8, 8)
        banned = [m for m in sys.modules if m.split(".")[0] in {hidden!r}]
        assert not banned, banned
        print("ok")
    """.replace("{hidden!r}", repr(HIDDEN)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


def test_missing_extra_is_named():
    res = run_hidden("""
        from energymask._extras import require
        try:
            require("matplotlib.figure", "plotting")
        except ImportError as err:
            print(err)
    """)
    assert "pip install 'energymask[viz]'" in res.stdout, res.stderr[-3000:]
    assert "plotting needs matplotlib" in res.stdout


def test_require_returns_the_module():
    assert require("json", "reading").dumps([1]) == "[1]"


def test_require_unknown_package_points_to_all():
    with pytest.raises(ImportError, match=r"energymask\[all\]"):
        require("no_such_package_xyz", "a feature")
