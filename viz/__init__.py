"""Figures of masks, energies and curves (matplotlib). Draws, never trains.

Every function returns ``(fig, axes)`` (``matplotlib.figure.Figure`` objects, no
pyplot state) or draws into the ``ax``/``axes`` given; none calls ``plt.show()``.
Save with ``fig.savefig(path)``. Needs matplotlib (``pip install 'energymask[viz]'``).

Conventions shared by every figure (docs/design.md §6, "Figures and the report"):
colour bars on keep and energy maps, keep maps on [0, 1] (the data's range only
when asked, and then said in the title), energy maps on their data's range,
accuracy axes fixed to [0, 1] with clean-accuracy and chance lines, curves told
apart by marker and line style as well as colour.
"""

from energymask._extras import require

require("matplotlib", "energymask.viz (the figures)")  # before the modules that need it

from .curves import (  # noqa: E402
    curve_auc,
    plot_curves,
    plot_occlusion,
    plot_occlusion_placements,
)
from .energies import plot_energy_maps  # noqa: E402
from .masks import (  # noqa: E402
    plot_ema_masks,
    plot_keep_comparison,
    plot_keep_masks,
    plot_mask_grid,
)
from .training import (  # noqa: E402
    matching_metrics,
    plot_training_log,
    read_metrics_csv,
)

__all__ = [
    "curve_auc",
    "matching_metrics",
    "plot_curves",
    "plot_ema_masks",
    "plot_energy_maps",
    "plot_keep_comparison",
    "plot_keep_masks",
    "plot_mask_grid",
    "plot_occlusion",
    "plot_occlusion_placements",
    "plot_training_log",
    "read_metrics_csv",
]
