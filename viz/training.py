"""Training curves read from a Lightning ``CSVLogger`` ``metrics.csv`` (no Lightning import)."""

from __future__ import annotations

import csv
from pathlib import Path

from energymask.viz._common import new_axes

__all__ = ["read_metrics_csv", "plot_training_log"]


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``column -> [(step, value), ...]`` for every metric column, skipping empty cells."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be a CSVLogger metrics.csv file, but {str(path)!r} is missing")
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f)):
            x = row.get("step") or row.get("epoch") or row_no
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                out.setdefault(k, []).append((float(x), float(v)))
    return out


def plot_training_log(path: str | Path, metrics: tuple[str, ...] = ("keep_ratio", "val_acc"),
                      axes=None):
    """One panel per metric over training steps.

    A metric matches the column of that name, any column starting with
    ``name/`` or ``name_`` (``val_acc_epoch``) and any ending in ``/name``: the
    callbacks log ``ersm/<layer>/keep_ratio``, ``pbedropout/<layer>/drop_rate``.

    Args:
        path: the ``metrics.csv`` written by ``CSVLogger``.
        metrics: names to draw. Default: ("keep_ratio", "val_acc").
        axes: optional axes, one per metric. Default: a new figure.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (1, len(metrics)).
    """
    data = read_metrics_csv(path)
    fig, ax = new_axes(1, len(metrics), scale=3.2, axes=axes)
    for a, m in zip(ax[0], metrics, strict=True):
        cols = [k for k in data
                if k == m or k.startswith((m + "/", m + "_")) or k.endswith("/" + m)]
        if not cols:
            raise ValueError(f"metrics must name columns of {str(path)!r}; {m!r} matches none "
                             f"of {sorted(data)}")
        for k in cols:
            xs, ys = zip(*data[k], strict=True)
            a.plot(xs, ys, marker="." if len(xs) < 30 else None, label=k)
        a.set_xlabel("step")
        a.set_title(m)
        a.legend(fontsize=7)
    return fig, ax
