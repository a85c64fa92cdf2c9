"""Training curves read from a Lightning ``CSVLogger`` ``metrics.csv`` (no Lightning import)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ._common import new_axes

__all__ = ["matching_metrics", "read_metrics_csv", "plot_training_log"]


#: y-axis labels of the usual metrics; metrics in [0, 1] get a fixed [0, 1] axis.
LABELS = {
    "loss": "cross-entropy loss",
    "acc": "accuracy",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy",
    "keep": "mean keep probability",
    "keep_ratio": "mean keep probability",
    "sparsity": "share of tokens with keep < 0.5",
    "hard_sparsity": "share of tokens with keep < 0.5",
    "relative_sparsity": "share of tokens with keep < mean / 2",
    "keep_gini": "Gini coefficient of the keep values",
    "drop_rate": "share of patches dropped",
}
UNIT_INTERVAL = ("acc", "val_acc", "train_acc", "keep", "keep_ratio", "sparsity", "hard_sparsity",
                 "relative_sparsity", "keep_gini", "drop_rate")


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``column -> [(epoch, value), ...]`` for every metric column, skipping empty cells.

    The epoch is a float: a row logged at the last step seen in epoch ``E`` (e.g.
    an epoch-end validation metric) sits at ``E + 1``, one logged earlier in the
    epoch at ``E`` plus its share of that epoch's steps. Without ``epoch`` and
    ``step`` columns it is the row number.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be a CSVLogger metrics.csv file, but {str(path)!r} is missing")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    last: dict[int, float] = {}
    for row in rows:
        if row.get("epoch") not in ("", None) and row.get("step") not in ("", None):
            e = int(float(row["epoch"]))
            last[e] = max(last.get(e, -1.0), float(row["step"]))
    out: dict[str, list[tuple[float, float]]] = {}
    for row_no, row in enumerate(rows):
        x = float(row_no)
        if row.get("epoch") not in ("", None) and row.get("step") not in ("", None):
            e, s = int(float(row["epoch"])), float(row["step"])
            start = max((v for k, v in last.items() if k < e), default=-1.0)
            x = e + (s - start) / max(last[e] - start, 1.0)
        for k, v in row.items():
            if k in ("step", "epoch") or v in ("", None):
                continue
            out.setdefault(k, []).append((x, float(v)))
    return out


def _matches(column: str, metric: str) -> bool:
    if column == metric:
        return True
    if column.startswith("test_"):
        return False
    return column.startswith((metric + "/", metric + "_")) or column.endswith(
        ("/" + metric, "_" + metric))


def matching_metrics(path: str | Path, metrics: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``metrics`` that match a column of the log (see :func:`plot_training_log`)."""
    columns = read_metrics_csv(path)
    return tuple(m for m in metrics if any(_matches(k, m) for k in columns))


def _short(column: str, metric: str) -> str:
    """Legend text: ``train_loss`` -> ``train``; ``val_ersm/model.layer2/keep_ratio`` ->
    ``val layer2`` (the callbacks' training-step columns have no prefix: ``train``)."""
    if column == metric:
        return column
    if column.endswith("_" + metric) and "/" not in column:
        return column[: -len(metric) - 1]
    if column.endswith("/" + metric):
        head = column[: -len(metric) - 1]
        split = "val" if head.startswith("val_") else "train"
        layer = head.split("/")[-1].removeprefix("model.")
        return f"{split} {layer}"
    return column


def plot_training_log(path: str | Path,
                      metrics: tuple[str, ...] = ("loss", "keep_ratio", "val_acc"),
                      axes=None):
    """One panel per metric over training epochs.

    A metric matches the column of that name, any column starting with
    ``name/`` or ``name_`` (``val_acc_epoch``) and any ending in ``/name`` or
    ``_name`` (``loss`` draws ``train_loss`` and ``val_loss``); ``test_*``
    columns only by their full name. The callbacks log ``ersm/<layer>/keep_ratio``,
    ``pbedropout/<layer>/drop_rate``.

    Args:
        path: the ``metrics.csv`` written by ``CSVLogger``.
        metrics: names to draw. Default: ("loss", "keep_ratio", "val_acc").
        axes: optional axes, one per metric. Default: a new figure.

    Returns:
        ``(fig, axes)`` with ``axes`` of shape (1, len(metrics)).
    """
    data = read_metrics_csv(path)
    fig, ax = new_axes(1, len(metrics), scale=3.3, axes=axes)
    if axes is None:
        fig.set_size_inches(3.3 * len(metrics), 3.0)
    for a, m in zip(ax[0], metrics, strict=True):
        cols = sorted(k for k in data if _matches(k, m))
        if not cols:
            raise ValueError(f"metrics must name columns of {str(path)!r}; {m!r} matches none "
                             f"of {sorted(data)}")
        for i, k in enumerate(cols):
            xs, ys = zip(*data[k], strict=True)
            a.plot(xs, ys, marker="os^D"[i % 4] if len(xs) < 30 else None, markersize=4,
                   label=_short(k, m))
        last = max(1.0, float(np.ceil(max(x for k in cols for x, _ in data[k]))))
        a.set_xlim(-0.04 * last, 1.04 * last)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("epoch")
        a.set_ylabel(LABELS.get(m, m))
        if m in UNIT_INTERVAL:
            a.set_ylim(0, 1.02)
        a.set_title(m, fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return fig, ax
