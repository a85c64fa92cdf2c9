"""Figures of masks, energies and curves (matplotlib). Draws, never trains.

Every function returns ``(fig, axes)`` (``matplotlib.figure.Figure`` objects, no
pyplot state) or draws into the ``ax``/``axes`` given; none calls ``plt.show()``.
Save with ``fig.savefig(path)``.
"""

from energymask.viz.curves import (
    curve_auc,
    plot_curves,
    plot_occlusion,
    plot_occlusion_placements,
)
from energymask.viz.energies import plot_energy_maps
from energymask.viz.masks import plot_ema_masks, plot_keep_masks, plot_mask_grid
from energymask.viz.training import plot_training_log, read_metrics_csv

__all__ = [
    "curve_auc",
    "plot_curves",
    "plot_ema_masks",
    "plot_energy_maps",
    "plot_keep_masks",
    "plot_mask_grid",
    "plot_occlusion",
    "plot_occlusion_placements",
    "plot_training_log",
    "read_metrics_csv",
]
