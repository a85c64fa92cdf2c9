"""Deletion / insertion curves with AUC, and accuracy under structured occlusion."""

from __future__ import annotations

from energymask.evaluation import auc as curve_auc  # the one AUC, kept under its viz name
from energymask.viz._common import to_numpy

__all__ = ["curve_auc", "plot_curves", "plot_occlusion"]


def _draw(ax, f, a, label: str) -> None:
    """Mean line, and a +-1 std band when ``a`` is (seeds, n)."""
    if a.ndim == 2:
        mean, std = a.mean(0), a.std(0)
        (line,) = ax.plot(f, mean, label=label)
        ax.fill_between(f, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    else:
        ax.plot(f, a, label=label)


def _new(ax):
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 3.5), layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


def plot_curves(result, auc: dict | None = None, ax=None, title: str = "deletion test",
                xlabel: str = "fraction of tokens deleted"):
    """Deletion (or insertion) curves, one per ordering, with the AUC in the legend.

    Args:
        result: either a dict ``name -> (fractions, accuracies)`` or an object with
            ``.fractions`` (n,), ``.curves`` (dict ``name -> accuracies``) and optionally
            ``.auc`` (dict ``name -> float``). Accuracies are (n,) or (seeds, n): then
            the mean is drawn with a +-1 std band.
        auc: ``name -> AUC``; computed by :func:`curve_auc` on the mean curve when missing.
        ax: optional axes. Default: a new figure.

    Returns:
        ``(fig, ax)``.
    """
    if hasattr(result, "curves"):
        fr = to_numpy(result.fractions)
        series = {k: (fr, to_numpy(v)) for k, v in result.curves.items()}
        auc = auc if auc is not None else getattr(result, "auc", None)
    elif isinstance(result, dict):
        series = {k: (to_numpy(v[0]), to_numpy(v[1])) for k, v in result.items()}
    else:
        raise TypeError("result must be a dict name -> (fractions, accuracies) or have "
                        f".fractions and .curves, but got {type(result).__name__}")
    auc = dict(auc or {})
    fig, ax = _new(ax)
    for name, (f, a) in series.items():
        if a.shape[-1] != f.shape[0]:
            raise ValueError(f"curve {name!r} has {a.shape[-1]} points for {f.shape[0]} fractions")
        value = auc.get(name)
        if value is None:
            value = curve_auc(f, a.mean(0) if a.ndim == 2 else a)
        _draw(ax, f, a, f"{name} (AUC {float(value):.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig, ax


def plot_occlusion(fractions, accuracies_by_model: dict, ax=None,
                   title: str = "structured occlusion"):
    """Accuracy vs occluded fraction of the image, one line per model.

    Args:
        fractions: (n,) occluded fractions.
        accuracies_by_model: ``model name -> accuracies`` (n,) or (seeds, n).
        ax: optional axes. Default: a new figure.

    Returns:
        ``(fig, ax)``.
    """
    f = to_numpy(fractions)
    fig, ax = _new(ax)
    for name, acc in accuracies_by_model.items():
        a = to_numpy(acc)
        if a.shape[-1] != f.shape[0]:
            raise ValueError(f"model {name!r} has {a.shape[-1]} points for {f.shape[0]} fractions")
        _draw(ax, f, a, name)
    ax.set_xlabel("fraction of the image occluded")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig, ax
