"""energymask.viz without matplotlib: an ImportError naming the extra to install."""

import subprocess
import sys

import energymask.viz


def test_exports_every_figure():
    assert {"plot_mask_grid", "plot_keep_masks", "plot_keep_comparison", "plot_energy_maps",
            "plot_curves", "plot_occlusion", "plot_occlusion_placements", "plot_ema_masks",
            "plot_training_log"} <= set(energymask.viz.__all__)


def test_missing_matplotlib_names_the_extra():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "try:\n    import energymask.viz\nexcept ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert "energymask.viz (the figures) needs matplotlib" in out.stdout, out.stderr[-2000:]
    assert "pip install 'energymask[viz]'" in out.stdout
