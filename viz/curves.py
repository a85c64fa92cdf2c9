"""Deletion / insertion curves with AUC, and accuracy under structured occlusion.

Every panel has the y-axis fixed to [0, 1] (accuracy), a dashed clean-accuracy
line and a dotted chance line when given, and curves told apart by colour,
marker and line style (markers shrink from curve to curve, so curves lying on
top of each other stay visible).
"""

from __future__ import annotations

from types import SimpleNamespace

from energymask.constants import DELETION_PROTOCOLS
from energymask.evaluation import auc as curve_auc  # the one AUC, kept under its viz name

from ._common import new_axes, reference_lines, style, to_numpy

__all__ = ["curve_auc", "plot_curves", "plot_occlusion", "plot_occlusion_placements"]



def _draw(ax, f, a, label: str, i: int):
    """Mean line (styled as curve ``i``), and a +-1 std band when ``a`` is (seeds, n)."""
    mean = a.mean(0) if a.ndim == 2 else a
    (line,) = ax.plot(f, mean, label=label, linewidth=1.4, **style(i))
    if a.ndim == 2:
        std = a.std(0)
        ax.fill_between(f, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    return line


def _new(ax, width: float = 6.2):
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, 3.6), layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


def _finish(ax, xlabel: str, title: str, legend: bool = True) -> None:
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _series(result):
    """``(name -> (fractions, accuracies), auc or None, settings)`` of any accepted result."""
    if isinstance(result, dict) and {"fractions", "curves"} <= set(result):
        result = SimpleNamespace(**result)
    if hasattr(result, "curves"):
        fr = to_numpy(result.fractions)
        series = {k: (fr, to_numpy(v)) for k, v in result.curves.items()}
        return series, getattr(result, "auc", None), getattr(result, "settings", None) or {}
    if isinstance(result, dict):
        return {k: (to_numpy(v[0]), to_numpy(v[1])) for k, v in result.items()}, None, {}
    raise TypeError("result must be a dict name -> (fractions, accuracies) or have "
                    f".fractions and .curves, but got {type(result).__name__}")


def plot_curves(result, auc: dict | None = None, ax=None, title: str = "deletion test",
                xlabel: str = "fraction of tokens deleted", clean: float | None = None,
                chance: float | None = None, protocol: str | None = None):
    """Deletion (or insertion) curves, one per ordering, with the AUC in the legend.

    Args:
        result: a dict ``name -> (fractions, accuracies)``, or a ``DeletionResult``
            (or its ``to_dict()``): ``.fractions`` (n,), ``.curves`` (dict ``name ->
            accuracies``), optionally ``.auc`` and ``.settings``. Accuracies are (n,)
            or (seeds, n): then the mean is drawn with a +-1 std band.
        auc: ``name -> AUC``; computed by :func:`curve_auc` on the mean curve when missing.
        ax: optional axes. Default: a new figure.
        title: the panel's title.
        xlabel: the x-axis label.
        clean: the model's clean accuracy (dashed line). Default: none.
        chance: chance accuracy, 1 / classes (dotted line). Default: none.
        protocol: the deletion protocol named under the title, with its meaning
            (:data:`energymask.constants.DELETION_PROTOCOLS`).
            Default: the result's ``protocol`` (or ``settings["protocol"]``) when it has one.

    Returns:
        ``(fig, ax)``.
    """
    series, result_auc, settings = _series(result)
    auc = dict(auc if auc is not None else (result_auc or {}))
    if protocol is None:
        protocol = getattr(result, "protocol", None) or (
            result.get("protocol") if isinstance(result, dict) else None
        ) or settings.get("protocol")
    fig, ax = _new(ax)
    for i, (name, (f, a)) in enumerate(series.items()):
        if a.shape[-1] != f.shape[0]:
            raise ValueError(f"curve {name!r} has {a.shape[-1]} points for {f.shape[0]} fractions")
        value = auc.get(name)
        if value is None:
            value = curve_auc(f, a.mean(0) if a.ndim == 2 else a)
        _draw(ax, f, a, f"{name} (AUC {float(value):.3f})", i)
    reference_lines(ax, clean, chance)
    starts = [float((a.mean(0) if a.ndim == 2 else a)[0]) for f, a in series.values()
              if f[0] == 0]
    if clean is not None and protocol == "binary" and starts and max(starts) < clean - 0.02:
        ax.text(1.03, 0.02, "Starts below the clean\naccuracy: an all-ones\n"
                "binary mask is not the\nsoft keep map the model\nwas trained with.",
                transform=ax.transAxes,
                fontsize=7, color="dimgrey", va="bottom")
    if protocol is not None:
        title += f"\n{protocol} protocol: {DELETION_PROTOCOLS.get(protocol, protocol)}"
    _finish(ax, xlabel, title)
    return fig, ax


def plot_occlusion(fractions, accuracies_by_model: dict, ax=None,
                   title: str = "structured occlusion", chance: float | None = None,
                   legend: bool = True):
    """Accuracy vs occluded fraction of the image, one line per model.

    The point at fraction 0 is each model's clean accuracy; a thin line in the
    model's colour carries it across, so the drop reads directly.

    Args:
        fractions: (n,) occluded fractions.
        accuracies_by_model: ``model name -> accuracies`` (n,) or (seeds, n).
        ax: optional axes. Default: a new figure.
        title: the panel's title.
        chance: chance accuracy, 1 / classes (dotted line). Default: none.
        legend: draw the legend. Default: True.

    Returns:
        ``(fig, ax)``.
    """
    f = to_numpy(fractions)
    fig, ax = _new(ax, width=5.6)
    for i, (name, acc) in enumerate(accuracies_by_model.items()):
        a = to_numpy(acc)
        if a.shape[-1] != f.shape[0]:
            raise ValueError(f"model {name!r} has {a.shape[-1]} points for {f.shape[0]} fractions")
        line = _draw(ax, f, a, name, i)
        clean = float((a.mean(0) if a.ndim == 2 else a)[0]) if f[0] == 0 else None
        if clean is not None:
            ax.axhline(clean, color=line.get_color(), linewidth=0.7, alpha=0.6)
    if f[0] == 0:
        ax.plot([], [], color="grey", linewidth=0.7, label="clean accuracy (thin)")
    reference_lines(ax, None, chance)
    _finish(ax, "fraction of the image occluded", title, legend)
    return fig, ax


def plot_occlusion_placements(fractions, accuracies: dict, chance: float | None = None,
                              axes=None, patch_size: int | None = None):
    """One :func:`plot_occlusion` panel per placement (random, on the object), side by side.

    Args:
        fractions: (n,) occluded fractions, or ``placement -> fractions`` when the
            placements were measured at different fractions.
        accuracies: ``placement -> {model name -> accuracies}``.
        chance: chance accuracy (dotted line). Default: none.
        axes: optional axes, one per placement. Default: a new figure.
        patch_size: the occluding patches' side in pixels, named in the title.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (1, placements).
    """
    if not accuracies:
        raise ValueError("accuracies must map at least one placement to model curves")
    fig, ax = new_axes(1, len(accuracies), axes=axes)
    if axes is None:
        fig.set_size_inches(3.6 * len(accuracies) + 1.8, 3.6)
    for k, (a, (placement, models)) in enumerate(zip(ax[0], accuracies.items(), strict=True)):
        where = "on the object" if placement == "object" else placement
        f = fractions[placement] if isinstance(fractions, dict) else fractions
        plot_occlusion(f, models, ax=a, title=f"placement: {where}", chance=chance,
                       legend=k == len(accuracies) - 1)
    size = f" ({patch_size}x{patch_size}-pixel patches)" if patch_size else ""
    fig.suptitle(f"structured occlusion{size}", fontsize=10)
    return fig, ax
