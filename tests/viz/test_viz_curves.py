from types import SimpleNamespace

import numpy as np
import pytest

from energymask.viz import curve_auc, plot_curves, plot_occlusion, plot_occlusion_placements


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_curve_auc():
    f = np.linspace(0, 1, 5)
    assert curve_auc(f, np.ones(5)) == pytest.approx(1.0)
    assert curve_auc(f, 1 - f) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fractions must increase"):
        curve_auc([0.5, 0.5], [1, 1])


def test_plot_curves_dict_computes_auc(tmp_path):
    f = np.linspace(0, 1, 5)
    fig, ax = plot_curves({"energy": (f, np.ones(5)), "random": (f, 1 - f)})
    assert _legend(ax) == ["energy (AUC 1.000)", "random (AUC 0.500)"]
    assert ax.get_ylim() == (0, 1.02)
    energy, random = ax.get_lines()
    assert (energy.get_marker(), energy.get_linestyle()) != (random.get_marker(),
                                                            random.get_linestyle())
    assert energy.get_markersize() > random.get_markersize()
    path = tmp_path / "c.png"
    fig.savefig(path)
    assert path.stat().st_size > 0


def test_plot_curves_clean_chance_and_protocol():
    f = np.linspace(0, 1, 3)
    result = {"fractions": f.tolist(), "curves": {"energy": [0.8, 0.9, 0.1]},
              "auc": {"energy": 0.7}, "settings": {"protocol": "binary"}}
    _, ax = plot_curves(result, clean=0.99, chance=0.1, title="deletion test: m")
    assert _legend(ax) == ["energy (AUC 0.700)", "clean accuracy 0.990", "chance 0.10"]
    assert ax.get_title() == ("deletion test: m\nbinary protocol: the tokens not deleted are "
                              "forced to keep 1")
    assert [tuple(line.get_ydata()) for line in ax.get_lines()[1:]] == [(0.99, 0.99),
                                                                          (0.1, 0.1)]
    # Binary start 0.19 below clean: the figure says why.
    assert ax.texts[0].get_text().startswith("Starts below the clean")
    assert not plot_curves(result, clean=0.81)[1].texts
    _, ax = plot_curves(result, protocol="soft", clean=0.99)
    assert not ax.texts
    assert ax.get_title().endswith("soft protocol: the tokens not deleted keep their soft "
                                   "keep value")
    _, ax = plot_curves({k: v for k, v in result.items() if k != "settings"})
    assert ax.get_title() == "deletion test"
    res = SimpleNamespace(fractions=f, curves={"energy": np.ones(3)}, protocol="soft")
    assert plot_curves(res)[1].get_title().startswith("deletion test\nsoft protocol")


def test_plot_curves_result_object_with_seeds():
    f = np.linspace(0, 1, 4)
    res = SimpleNamespace(fractions=f, curves={"energy": np.ones((3, 4)), "mag": np.zeros(4)},
                          auc={"energy": 0.9})
    _, ax = plot_curves(res)
    assert _legend(ax) == ["energy (AUC 0.900)", "mag (AUC 0.000)"]
    assert len(ax.collections) == 1  # the std band of the 2-D curve


def test_plot_curves_errors():
    with pytest.raises(TypeError, match="result must be"):
        plot_curves([1, 2])
    with pytest.raises(ValueError, match="points for"):
        plot_curves({"a": (np.arange(3), np.arange(4))})


def test_plot_occlusion(tmp_path):
    f = np.linspace(0, 0.5, 6)
    fig, ax = plot_occlusion(f, {"ersm": 1 - f, "baseline": np.stack([1 - 2 * f] * 2)},
                             chance=0.1)
    assert _legend(ax) == ["ersm", "baseline", "clean accuracy (thin)", "chance 0.10"]
    assert ax.get_ylim() == (0, 1.02)
    clean = [line for line in ax.get_lines() if line.get_linewidth() == 0.7]
    assert [line.get_ydata()[0] for line in clean[:2]] == [1.0, 1.0]
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0
    with pytest.raises(ValueError, match="points for"):
        plot_occlusion(f, {"x": np.ones(3)})


def test_plot_occlusion_placements(tmp_path):
    f = [0.0, 0.25, 0.5]
    acc = {"random": {"a": [0.9, 0.8, 0.7], "b": [0.9, 0.8, 0.7]},
           "object": {"a": [0.9, 0.5, 0.2], "b": [0.9, 0.4, 0.1]}}
    fig, axes = plot_occlusion_placements(f, acc, chance=0.1, patch_size=8)
    assert axes.shape == (1, 2)
    assert [a.get_title() for a in axes[0]] == ["placement: random",
                                                "placement: on the object"]
    assert axes[0, 0].get_legend() is None and axes[0, 1].get_legend() is not None
    assert fig.get_suptitle() == "structured occlusion (8x8-pixel patches)"
    # Equal curves stay visible: different markers and marker sizes.
    a, b = axes[0, 0].get_lines()[0], axes[0, 0].get_lines()[2]
    assert a.get_marker() != b.get_marker() and a.get_markersize() > b.get_markersize()
    fig.savefig(tmp_path / "p.png")
    with pytest.raises(ValueError, match="at least one placement"):
        plot_occlusion_placements(f, {})


def test_plot_occlusion_placements_at_their_own_fractions():
    fractions = {"random": [0.0, 0.25, 0.5], "object": [0.0, 0.02, 0.05]}
    acc = {"random": {"a": [0.9, 0.8, 0.7]}, "object": {"a": [0.9, 0.5, 0.2]}}
    _, axes = plot_occlusion_placements(fractions, acc)
    for a, placement in zip(axes[0], ("random", "object"), strict=True):
        np.testing.assert_allclose(a.get_lines()[0].get_xdata(), fractions[placement])
