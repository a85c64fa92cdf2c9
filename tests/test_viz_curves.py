from types import SimpleNamespace

import numpy as np
import pytest

from energymask.viz import curve_auc, plot_curves, plot_occlusion


def test_curve_auc():
    f = np.linspace(0, 1, 5)
    assert curve_auc(f, np.ones(5)) == pytest.approx(1.0)
    assert curve_auc(f, 1 - f) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fractions must increase"):
        curve_auc([0.5, 0.5], [1, 1])


def test_plot_curves_dict_computes_auc(tmp_path):
    f = np.linspace(0, 1, 5)
    fig, ax = plot_curves({"energy": (f, np.ones(5)), "random": (f, 1 - f)})
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["energy (AUC 1.000)", "random (AUC 0.500)"]
    path = tmp_path / "c.png"
    fig.savefig(path)
    assert path.stat().st_size > 0


def test_plot_curves_result_object_with_seeds():
    f = np.linspace(0, 1, 4)
    res = SimpleNamespace(fractions=f, curves={"energy": np.ones((3, 4)), "mag": np.zeros(4)},
                          auc={"energy": 0.9})
    _, ax = plot_curves(res)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["energy (AUC 0.900)", "mag (AUC 0.000)"]
    assert len(ax.collections) == 1  # the std band of the 2-D curve


def test_plot_curves_errors():
    with pytest.raises(TypeError, match="result must be"):
        plot_curves([1, 2])
    with pytest.raises(ValueError, match="points for"):
        plot_curves({"a": (np.arange(3), np.arange(4))})


def test_plot_occlusion(tmp_path):
    f = np.linspace(0, 0.5, 6)
    fig, ax = plot_occlusion(f, {"ersm": 1 - f, "baseline": np.stack([1 - 2 * f] * 2)})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ersm", "baseline"]
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0
    with pytest.raises(ValueError, match="points for"):
        plot_occlusion(f, {"x": np.ones(3)})
