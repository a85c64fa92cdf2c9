"""Figure (issue 20): the authors' dimmed ERSM map beside ours, gate="hard", on the same images.

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).
Trains ``small_cnn`` with ERSM after ``layer2`` twice on cluttered digits (the
same seed, data and settings: λ = γ = 1e-3, T = 1, bias 0), once with the
authors' soft gate and once with ours, and draws, for the first test images:
the image with the digit's outline, the soft keep map and our executed binary
mask, both on the fixed scale 0..1 (so dimming shows as dimming).

    python benchmarks/figure_ersm_gate.py    # writes docs/figures/ersm_gate.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from energymask.lightning_modules.app import recipes as ex

FIGURE = Path(__file__).parent.parent / "docs" / "figures" / "ersm_gate.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = replace(ex.Budget(), num_train=args.num_train, epochs=args.epochs, batch_size=32,
                     num_val=200, num_test=500)  # results_ersm.py --gate's data and seed 0
    dm = ex.datamodule(budget, args.seed)
    x, y, obj = next(iter(ex.eval_loader(dm, args.images)))
    keeps, accs = {}, {}
    for gate in ("soft", "hard"):
        model, accs[gate] = ex.train_ersm_inside(dm, budget, args.seed, progress=False,
                                                 gate=gate)
        with torch.no_grad():
            model(x)
        keeps[gate] = model.backbone.layer2.layer.last_keep
    titles = {"soft": f"authors' soft\n(test acc {accs['soft']:.2f})",
              "hard": f"ours, gate='hard'\n(test acc {accs['hard']:.2f})"}
    fig, axes = plt.subplots(len(x), 3, figsize=(7.5, 2.4 * len(x)), squeeze=False)
    for i in range(len(x)):
        axes[i, 0].imshow(x[i, 0], cmap="gray")
        axes[i, 0].contour(obj[i].squeeze(0), levels=[0.5], colors="red", linewidths=0.8)
        for j, gate in enumerate(("soft", "hard"), start=1):
            k = keeps[gate][i]
            im = axes[i, j].imshow(k, cmap="viridis", vmin=0, vmax=1)
            axes[i, j].set_xlabel(f"mean keep {float(k.mean()):.2f}")
            if i == 0:
                axes[i, j].set_title(titles[gate], fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.5, label="keep (fixed scale 0..1)")
    fig.suptitle(f"ERSM after layer2 of small_cnn, {args.num_train} images, {args.epochs} "
                 "epochs: the soft map dims, the hard one opens or closes each token", fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}; test accuracy soft {accs['soft']:.3f}, hard {accs['hard']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
