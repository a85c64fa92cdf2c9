"""``energymask demo``: everything the project does, on cluttered digits, in minutes on a CPU.

Trains (recipes of :mod:`energymask.lightning_modules.app.recipes`):

1. a baseline ``small_cnn``;
2. the authors' frozen-backbone protocol: ERSM on the baseline's frozen features;
3. ``small_cnn`` with ERSM inside the backbone (after ``layer2``, via ``ERSMCallback``);
4. ours, not the authors': the same with ``gate="hard"`` (the binary mask that
   inference executes, also in training) at T = 0.1 (the remedy of the logits'
   narrow range, docs/design.md §3); same data, seed and other settings as 3;
5. ``shallow_cnn`` with no dropout, with ``nn.Dropout2d`` and with PB-EDropout
   (``PBEDropoutCallback``);

then runs the deletion test (five orderings), structured occlusion and mask
quality, and writes to the run folder::

    report.md        a report that stands alone (:mod:`.report`): claims' verdicts,
                     metric definitions, settings, tables, captioned figures, machine
    metrics.json     every number of the report, and the settings
    figures/*.png    masks, energies, deletion curves, occlusion, EMA masks, training log,
                     the authors' soft keep map beside ours (gate="hard") on the same images
    logs/            the Lightning log of the ERSM-inside run
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from energymask.ersm import computing_energies, energy_mask_layers
from energymask.pbedropout import PBEDropout2d
from energymask.viz import (
    plot_curves,
    plot_ema_masks,
    plot_energy_maps,
    plot_keep_comparison,
    plot_mask_grid,
    plot_occlusion_placements,
    plot_training_log,
)

from . import recipes as ex
from .report import ERSM_MODELS, OURS, deletion_results, machine, model_settings, write_report
from .runs import save_figure, write_atomic
from .settings import ERSM_SETTINGS  # the authors' λ, γ, T with the application's bias

#: Ours: the binary gate at T = 0.1, the setting that selects inside ``small_cnn``
#: (docs/design.md §3, benchmarks/results/ersm_gate.md).
HARD_GATE = {"gate": "hard", "temperature": 0.1}


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[energymask demo] {text}", flush=True)


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, dpi=110).name


def _figures(out: Path, dm, models: dict[str, torch.nn.Module], results: dict[str, Any]
             ) -> list[str]:
    """Masks and energies of the authors' ERSM models, curves, EMA masks, training log, and
    the authors' soft keep map beside ours (gate="hard") on the same images."""
    fig_dir = out / "figures"
    x, y, obj = next(iter(ex.eval_loader(dm, 6)))
    chance = 1.0 / dm.num_classes
    names = []
    for key in ("frozen_ersm", "ersm_inside"):
        model = models[key]
        ((where, layer),) = energy_mask_layers(model).items()
        with torch.no_grad(), computing_energies(layer):
            predicted = model(x).argmax(-1)
        fig, _ = plot_mask_grid(x, layer.last_keep, obj, labels=y, predictions=predicted,
                                max_rows=6)
        fig.suptitle(f"{key}: ERSM keep map at {where}")
        names.append(_save(fig, fig_dir / f"masks_{key}.png"))
        fig, _ = plot_energy_maps(layer.last_unary, layer.last_pairwise, images=x, max_rows=3,
                                  logits=layer.last_logits)
        fig.suptitle(f"{key}: ERSM energies at {where}")
        names.append(_save(fig, fig_dir / f"energies_{key}.png"))
        for protocol, deletion in deletion_results(results[key]).items():
            suffix = "" if protocol == "binary" else f"_{protocol}"
            fig, _ = plot_curves(deletion, title=f"deletion test: {key}", protocol=protocol,
                                 clean=results["test_accuracy"][key], chance=chance)
            names.append(_save(fig, fig_dir / f"deletion_{key}{suffix}.png"))
    names.append(_save(_soft_vs_hard(models, x, y, obj), fig_dir / "ersm_soft_vs_hard.png"))
    fig, _ = plot_occlusion_placements(results["occlusion_placements"], results["occlusion"],
                                       chance=chance, patch_size=ex.OCCLUSION_PATCH_SIZE)
    names.append(_save(fig, fig_dir / "occlusion.png"))
    ((where, pb),) = [(n, m) for n, m in models["pbedropout"].named_modules()
                      if isinstance(m, PBEDropout2d)]
    dropped = 1 - pb.deterministic_mask()[0]
    fig, _ = plot_ema_masks(pb.ema_mask, layer=where, p=pb.p, dropped=dropped, max_channels=32)
    names.append(_save(fig, fig_dir / "pbedropout_ema_masks.png"))
    fig, _ = plot_training_log(out / "logs" / "metrics.csv",
                               ("loss", "val_acc", "keep_ratio", "hard_sparsity"))
    fig.suptitle("ersm_inside: training (ERSM after layer2)")
    names.append(_save(fig, fig_dir / "training_ersm_inside.png"))
    return names


def _soft_vs_hard(models: dict[str, torch.nn.Module], x, y, obj):
    """The authors' soft keep map (ersm_inside) beside ours, gate="hard" (ersm_inside_hard)."""
    keeps, predictions = {}, {}
    for key, title in (("ersm_inside", "authors' soft keep:\ndimmed"),
                       ("ersm_inside_hard", "ours, gate='hard', T=0.1:\nexecuted binary mask")):
        model = models[key]
        ((_, layer),) = energy_mask_layers(model).items()
        with torch.no_grad():
            predictions[title] = model(x).argmax(-1)
        keeps[title] = layer.last_keep
    fig, _ = plot_keep_comparison(x, keeps, obj, labels=y, predictions=predictions, max_rows=6)
    fig.suptitle("ERSM after layer2 of small_cnn, same images, data and seed",
                 fontsize=9)
    return fig


def run_demo(out_dir: Path, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Train, evaluate and write the demo's run folder; returns ``metrics.json``'s content.

    Args:
        out_dir: the run folder (created).
        quick: a smoke run of about a minute (tiny data, one epoch).
        seed: seed of data, initialisation, sampling and evaluation.
        progress: progress bars and stage messages.
    """
    with _lightning_warnings_only():
        return _run(Path(out_dir), quick, seed, progress)


@contextlib.contextmanager
def _lightning_warnings_only() -> Iterator[None]:
    """Both Lightning packages' loggers at WARNING for the block, their levels restored after."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "pytorch_lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run(out: Path, quick: bool, seed: int, progress: bool) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    budget = ex.QUICK if quick else ex.Budget()
    dm = ex.datamodule(budget, seed)
    models: dict[str, torch.nn.Module] = {}
    accuracy: dict[str, float] = {}

    _say(progress, "1/6 baseline small_cnn")
    models["baseline"], accuracy["baseline"] = ex.train_baseline(dm, budget, seed, progress)
    _say(progress, "2/6 authors' protocol: ERSM on the frozen baseline backbone")
    models["frozen_ersm"], accuracy["frozen_ersm"] = ex.train_frozen_ersm(
        models["baseline"], dm, budget, seed, progress, **ERSM_SETTINGS)
    _say(progress, "3/6 ERSM inside the backbone (after layer2), ERSMCallback")
    models["ersm_inside"], accuracy["ersm_inside"] = ex.train_ersm_inside(
        dm, budget, seed, progress=progress, log_dir=out / "logs", **ERSM_SETTINGS)
    _say(progress, "4/6 ours: ERSM inside with gate='hard', T = 0.1 (the executed binary mask)")
    models["ersm_inside_hard"], accuracy["ersm_inside_hard"] = ex.train_ersm_inside(
        dm, budget, seed, progress=progress, **{**ERSM_SETTINGS, **HARD_GATE})
    _say(progress, "5/6 shallow_cnn with no dropout, Dropout2d and PB-EDropout")
    for kind in ("none", "dropout2d", "pbedropout"):
        models[kind], accuracy[kind] = ex.train_regularised(dm, budget, seed, kind,
                                                            progress=progress)

    timings = {"training": time.perf_counter() - start}
    _say(progress, "6/6 deletion test, occlusion, mask quality, figures")
    metrics: dict[str, Any] = {"seed": seed, "quick": quick, "budget": budget.to_dict(),
                               "ersm_settings": ERSM_SETTINGS, "test_accuracy": accuracy,
                               "ours": dict(OURS)}
    for key in ERSM_MODELS:
        metrics[key] = ex.evaluate_ersm(models[key], dm, budget, seed, progress)
    metrics["occlusion"] = ex.occlusion(
        {k: models[k] for k in ("baseline", *ERSM_MODELS)}, dm, seed, progress)
    timings["evaluation"] = time.perf_counter() - start - timings["training"]
    x = next(iter(ex.eval_loader(dm, 1)))[0]
    metrics.update(num_classes=dm.num_classes, occlusion_fractions=list(ex.OCCLUSION_FRACTIONS),
                   occlusion_placements={k: list(v) for k, v in ex.OCCLUSION_PLACEMENTS.items()},
                   occlusion_patch_size=ex.OCCLUSION_PATCH_SIZE,
                   models=model_settings(models, x), machine=machine())
    figures = _figures(out, dm, models, metrics)
    timings["figures"] = time.perf_counter() - start - sum(timings.values())
    metrics["timings"] = timings
    metrics["seconds"] = time.perf_counter() - start
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(out, metrics, figures)
    return metrics


__all__ = ["ERSM_SETTINGS", "run_demo"]
