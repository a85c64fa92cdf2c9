"""The ``energymask`` command line: ``demo``, ``train``, ``evaluate``, ``plot``.

Installed as ``energymask`` (``python -m energymask`` too); ``--help`` on every
command. ``train`` writes a run folder (see :mod:`energymask.lightning_modules.app.runs`),
``evaluate`` adds ``evaluation.json`` to it, ``plot`` draws ``figures/*.png`` from it.

Expected errors (bad data folder, output folder not writable, a folder or
checkpoint that is not an energymask run) print ``energymask <command>: error:
<message>`` on stderr and exit with status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from energymask.ersm import EnergyMask2d, energy_mask_layers
from energymask.pbedropout import PBEDropout2d, PBEDropoutSettings

from . import runs as _runs

ORDERINGS_ALWAYS = ("energy", "magnitude", "random")
ORDERINGS_EXTRA = {"gradcam": "gradcam", "ablation": "feature_ablation",
                   "feature_ablation": "feature_ablation"}


# -- parser ------------------------------------------------------------------------------------

def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train and compare the models on cluttered digits, "
                       "write figures, metrics.json and report.md",
                       description="The end-to-end demo on cluttered digits: a baseline CNN, "
                       "the CNN with ERSM, the shallow CNN with dropout and with PB-EDropout; "
                       "deletion test, structured occlusion and mask quality; a report.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    p.add_argument("--seed", type=int, metavar="N", default=0,
                   help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier, optionally with ERSM / PB-EDropout layers",
        description="Train small_cnn or shallow_cnn with Lightning; --ersm / --pbedropout "
        "insert layers after the named blocks (layer1, layer2, layer3). Writes a run folder: "
        "run.json, model.ckpt, logs/metrics.csv.")
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=_runs.DATASETS, default="cluttered-digits",
                   help="dataset (default: %(default)s)")
    d.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="cifar10: the cifar-10-batches-py folder; image-folder: the root "
                   "of a class-per-sub-folder tree")
    d.add_argument("--image-size", type=int, metavar="N", default=64,
                   help="image-folder: images are resized to this square (default: %(default)s)")
    d.add_argument("--spurious", action="store_true",
                   help="cluttered-digits: class-correlated backgrounds in train, shuffled in test")
    for split, n in (("train", 5000), ("val", 1000), ("test", 1000)):
        d.add_argument(f"--num-{split}", type=int, metavar="N", default=n,
                       help=f"cluttered-digits: {split} images (default: %(default)s)")

    m = p.add_argument_group("model and training")
    m.add_argument("--backbone", choices=sorted(_runs.BACKBONES), default="small_cnn",
                   help="(default: %(default)s)")
    m.add_argument("--epochs", type=int, metavar="N", default=5, help="(default: %(default)s)")
    m.add_argument("--batch-size", type=int, metavar="N", default=64, help="(default: %(default)s)")
    m.add_argument("--lr", type=float, metavar="X", default=1e-3, help="AdamW learning rate "
                   "(default: %(default)s)")
    m.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of data, init and training (default: %(default)s)")
    m.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR",
                   help="run folder (default: %(default)s)")
    m.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                   help="Lightning accelerator (default: %(default)s)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = p.add_argument_group("ERSM (Energy-Regularized Spatial Masking)")
    e.add_argument("--ersm", nargs="+", metavar="LAYER", help="insert ERSM after these blocks")
    for flag, name, typ in (("--ersm-lam", "lam", float), ("--ersm-gamma", "gamma", float),
                            ("--ersm-temperature", "temperature", float),
                            ("--ersm-token-size", "token_size", int),
                            ("--ersm-bias-init", "bias_init", float)):
        e.add_argument(flag, dest=f"ersm_{name}", type=typ, metavar="X" if typ is float else "N",
                       default=_runs.default_of(EnergyMask2d, name),
                       help=f"{name} (default: %(default)s)")

    b = p.add_argument_group("PB-EDropout (patch-based energy dropout)")
    b.add_argument("--pbedropout", nargs="+", metavar="LAYER",
                   help="insert PB-EDropout after these blocks")
    for flag, name, what in (("--pb-p", "p", "drop rate"),
                             ("--pb-patch-size", "patch_size", "patch side"),
                             ("--pb-beta", "beta", "pairwise weight"),
                             ("--pb-population", "population", "K, candidate masks"),
                             ("--pb-generations", "generations", "G, genetic generations")):
        default = _runs.default_of(PBEDropoutSettings, name)
        b.add_argument(flag, dest=f"pb_{name}", type=type(default), default=default,
                       metavar="X" if isinstance(default, float) else "N",
                       help=f"{what} (default: %(default)s)")
    b.add_argument("--pb-freeze-epoch", type=int, metavar="N", default=None,
                   help="freeze the masks to their EMA from this epoch on (default: never)")
    p.set_defaults(func=cmd_train)


def _run_arguments(p: argparse.ArgumentParser, num_samples: int | None) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, metavar="DIR",
                       help="run folder written by `energymask train`")
    where.add_argument("--checkpoint", type=Path, metavar="FILE",
                       help="a checkpoint inside a run folder (next to its run.json)")
    p.add_argument("--num-samples", type=int, metavar="N", default=num_samples,
                   help="use only the first N test images (default: "
                   f"{num_samples or 'all'})")
    p.add_argument("--batch-size", type=int, metavar="N", default=128,
                   help="(default: %(default)s)")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="deletion test, structured occlusion and mask quality of a run",
        description="Evaluate a trained run on its test split: accuracy; deletion curves at "
        "every ERSM layer; accuracy under structured occlusion (random placement, and on the "
        "object where masks exist); mask quality (IoU, pointing game, entropy, keep ratio) "
        "where masks exist. Writes evaluation.json into the run folder.")
    _run_arguments(p, None)
    p.add_argument("--orderings", nargs="+", choices=sorted(ORDERINGS_EXTRA), default=[],
                   metavar="NAME", help="deletion orderings added to energy, magnitude and "
                   "random: gradcam, ablation (Captum LayerGradCam, FeatureAblation)")
    p.add_argument("--steps", type=int, metavar="N", default=16,
                   help="deletion steps, evenly spaced (default: %(default)s)")
    p.add_argument("--fractions", nargs="+", type=float, metavar="X", default=[0.0, 0.1, 0.25, 0.5],
                   help="occluded fractions of the image (default: %(default)s)")
    p.add_argument("--patch-size", type=int, metavar="N", default=8,
                   help="occluding patch side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of the random ordering and of the occlusions (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="figures of a run into <run>/figures/",
                       description="Draw the training log, the deletion and occlusion curves "
                       "(from evaluation.json) and the masks of a few test images into "
                       "<run>/figures/*.png.")
    _run_arguments(p, 8)
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energymask",
        description="Energy-based spatial masking (ERSM) and patch-based energy dropout "
        "(PB-EDropout): train, evaluate and plot; `energymask demo` shows everything.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_demo_parser, _train_parser, _evaluate_parser, _plot_parser):
        add(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("energymask")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# -- commands ----------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from energymask.lightning_modules.app.demo import run_demo

    out = _runs.prepare_out(args.out)
    run_demo(out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"energymask demo: results in {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from ..classifier import ImageClassifier
    from ..ersm_callback import ERSMCallback
    from ..pbedropout_callback import PBEDropoutCallback
    from .recipes import quiet_lightning

    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, but got "
                             f"{getattr(args, flag)}")
    data = {"name": args.data}
    if args.data == "cluttered-digits":
        data.update(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                    spurious=args.spurious)
    else:
        data["data_dir"] = str(args.data_dir.resolve()) if args.data_dir else None
        if args.data == "image-folder":
            data["image_size"] = args.image_size
    dm = _runs.build_datamodule(data, args.batch_size, args.seed)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model_spec = {"backbone": args.backbone, "in_channels": dm.in_channels,
                  "num_classes": dm.num_classes}
    net = _runs.build_model(**model_spec)
    callbacks: list[pl.Callback] = []
    spec: dict[str, Any] = {"data": data, "model": model_spec}
    if args.ersm:
        layers = _runs.qualify_layers(net, dm.in_channels, args.ersm, "--ersm")
        settings = {k: getattr(args, f"ersm_{k}")
                    for k in ("lam", "gamma", "temperature", "token_size", "bias_init")}
        callbacks.append(ERSMCallback(layers, **settings))
        spec["ersm"] = {"layers": layers, **settings}
    if args.pbedropout:
        layers = _runs.qualify_layers(net, dm.in_channels, args.pbedropout, "--pbedropout")
        settings = {k: getattr(args, f"pb_{k}")
                    for k in ("p", "patch_size", "beta", "population", "generations")}
        callbacks.append(PBEDropoutCallback(layers, freeze_at_epoch=args.pb_freeze_epoch,
                                            **settings))
        spec["pbedropout"] = {"layers": layers, "freeze_at_epoch": args.pb_freeze_epoch,
                              **settings}
    module = ImageClassifier(net, dm.num_classes, lr=args.lr, max_epochs=args.epochs)
    out = _runs.prepare_out(args.out)  # after the settings are checked
    quiet_lightning()
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=1, callbacks=callbacks,
        logger=CSVLogger(out, name="logs", version=""),
        enable_checkpointing=False, enable_progress_bar=not args.no_progress,
        enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(out / _runs.CHECKPOINT, weights_only=False)  # + callback states
    tested = trainer.test(module, datamodule=dm, verbose=False)
    spec.update(
        training={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "seed": args.seed, "accelerator": args.accelerator},
        checkpoint=_runs.CHECKPOINT, metrics_csv=_runs.METRICS,
        test={k: float(v) for k, v in (tested[0] if tested else {}).items()},
    )  # fmt: skip
    _runs.write_run(out, spec)
    print(f"energymask train: run written to {out} "
          f"(test accuracy {spec['test'].get('test_acc', float('nan')):.3f})")
    return 0


def _load(args: argparse.Namespace):
    """(run folder, run.json, model in eval mode, test loader) from ``--run``/``--checkpoint``."""
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, but got {args.num_samples}")
    folder, spec = _runs.read_run(args.run or args.checkpoint)
    checkpoint = args.checkpoint or folder / spec.get("checkpoint", _runs.CHECKPOINT)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} of run {str(folder)!r} "
                                "does not exist")
    module = _runs.load_model(spec, Path(checkpoint))
    dm = _runs.build_datamodule(spec["data"], args.batch_size, spec["training"]["seed"])
    dm.setup("test")
    test = dm.test_set
    if args.num_samples is not None:
        test = Subset(test, range(min(args.num_samples, len(test))))
    loader = DataLoader(test, batch_size=args.batch_size)
    return folder, spec, module, loader, dm.has_object_masks


@torch.no_grad()
def _accuracy_and_masks(net: torch.nn.Module, loader: DataLoader, with_masks: bool) -> dict:
    from energymask.mask_quality import mask_quality

    layers = energy_mask_layers(net)
    correct, total = 0, 0
    sums: dict[str, dict[str, float]] = {name: {} for name in layers}
    for batch in loader:
        x, y = batch[0], batch[1]
        correct += int((net(x).argmax(-1) == y).sum())
        total += len(y)
        if with_masks:
            for name, layer in layers.items():
                for k, v in mask_quality(layer.last_keep, batch[2]).items():
                    sums[name][k] = sums[name].get(k, 0.0) + v * len(y)
    quality = {n: {k: v / total for k, v in s.items()} for n, s in sums.items() if s}
    return {"accuracy": correct / total, "num_samples": total, "mask_quality": quality}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from energymask.deletion import deletion_curve
    from energymask.occlusion import occlusion_robustness

    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, but got {args.steps}")
    folder, spec, module, loader, with_masks = _load(args)
    _runs.prepare_out(folder)
    net = module.model
    progress = not args.no_progress
    result: dict[str, Any] = {"run": str(folder), **_accuracy_and_masks(net, loader, with_masks)}
    orderings = list(ORDERINGS_ALWAYS)
    orderings += [ORDERINGS_EXTRA[o] for o in args.orderings if ORDERINGS_EXTRA[o] not in orderings]
    result["deletion"] = {
        name: deletion_curve(net, loader, layer=name, orderings=orderings, steps=args.steps,
                             seed=args.seed, progress=progress).to_dict()
        for name in energy_mask_layers(net)
    }  # fmt: skip
    placements = ["random", "object"] if with_masks else ["random"]
    result["occlusion"] = {
        p: occlusion_robustness(net, loader, args.fractions, args.patch_size, placement=p,
                                seed=args.seed, progress=progress).to_dict()
        for p in placements
    }  # fmt: skip
    result["pbedropout"] = {
        name: {"ema_keep_ratio": float((layer.ema_mask >= 0.5).float().mean())}
        for name, layer in net.named_modules()
        if isinstance(layer, PBEDropout2d) and layer.ema_mask.numel()
    }  # fmt: skip
    (folder / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result))
    print(f"energymask evaluate: wrote {folder / 'evaluation.json'}")
    return 0


def _table(result: dict[str, Any]) -> str:
    lines = [f"test accuracy {result['accuracy']:.3f} on {result['num_samples']} images"]
    for layer, d in result["deletion"].items():
        aucs = "  ".join(f"{k} {v:.3f}" for k, v in d["auc"].items())
        lines.append(f"deletion AUC at {layer}: {aucs}")
    for placement, d in result["occlusion"].items():
        accs = "  ".join(f"{f:.2f}: {a:.3f}" for f, a in zip(d["fractions"],
                                                              d["accuracy"]["model"], strict=True))
        lines.append(f"occlusion ({placement}) accuracy by fraction: {accs}")
    for layer, q in result["mask_quality"].items():
        lines.append(f"mask quality at {layer}: " + "  ".join(f"{k} {v:.3f}" for k, v in q.items()))
    for layer, q in result["pbedropout"].items():
        lines.append(f"PB-EDropout at {layer}: EMA keep ratio {q['ema_keep_ratio']:.3f}")
    return "\n".join(lines)


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=100)
    written.append(path)


def cmd_plot(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from energymask import viz
    from energymask.deletion import DeletionResult

    folder, spec, module, loader, with_masks = _load(args)
    figures = _runs.prepare_out(folder / "figures")
    written: list[Path] = []
    log = folder / spec.get("metrics_csv", _runs.METRICS)
    if log.is_file():
        columns = viz.read_metrics_csv(log)
        wanted = [c for c in ("train_loss", "train_acc", "val_acc") if c in columns]
        wanted += [c for c in columns if c.endswith(("/keep_ratio", "/drop_rate"))]
        if wanted:
            _save(viz.plot_training_log(log, metrics=tuple(wanted))[0],
                  figures / "training.png", written)
    evaluation = folder / "evaluation.json"
    if evaluation.is_file():
        result = json.loads(evaluation.read_text())
        deletion = result.get("deletion", {})
        if deletion:
            fig = Figure(figsize=(4.5 * len(deletion), 3.5), layout="constrained")
            for ax, (layer, d) in zip(fig.subplots(1, len(deletion), squeeze=False)[0],
                                      deletion.items(), strict=True):
                viz.plot_curves(DeletionResult(**d), ax=ax, title=f"deletion at {layer}")
            _save(fig, figures / "deletion.png", written)
        occlusion = result.get("occlusion", {})
        if occlusion:
            first = next(iter(occlusion.values()))
            curves = {f"{p} placement": d["accuracy"]["model"] for p, d in occlusion.items()}
            _save(viz.plot_occlusion(first["fractions"], curves)[0], figures / "occlusion.png",
                  written)
    else:
        print(f"energymask plot: no evaluation.json in {folder}: run `energymask evaluate "
              f"--run {folder}` first for the deletion and occlusion figures")
    net = module.model
    batch = next(iter(loader))
    with torch.no_grad():
        net(batch[0])
    for name, layer in energy_mask_layers(net).items():
        fig = viz.plot_mask_grid(batch[0], layer.last_keep,
                                 batch[2] if with_masks else None)[0]
        _save(fig, figures / f"masks_{name.replace('.', '_')}.png", written)
    for name, layer in net.named_modules():
        if isinstance(layer, PBEDropout2d) and layer.ema_mask.numel():
            _save(viz.plot_ema_masks(layer.ema_mask)[0],
                  figures / f"ema_masks_{name.replace('.', '_')}.png", written)
    for path in written:
        print(path)
    return 0


# -- entry point -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"energymask {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
