"""The ``energymask`` command line: the parsers of ``demo``, ``train``, ``evaluate``, ``plot``.

Installed as ``energymask`` (``python -m energymask`` too); ``--help`` on every
command. The commands themselves are in :mod:`.commands`: ``train`` writes a run
folder (see :mod:`energymask.lightning_modules.app.runs`), ``evaluate`` adds
``evaluation.json`` to it, ``plot`` draws ``figures/*.png`` from it.

The parser imports neither torch nor Lightning (``--help`` answers at once; the
command's module, :mod:`.commands`, is imported after parsing). torch's CPU
threads are set before a command runs: ``--threads``, default
:func:`.options.default_threads`.

Expected errors (bad data folder, output folder not writable or holding a run, a
folder or checkpoint that is not an energymask run) print ``energymask <command>:
error: <message>`` on stderr and exit with status 2, like argparse's own usage
errors; an interrupted ``train`` (Ctrl-C) exits with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from energymask.constants import DELETION_PROTOCOLS, GATES

from .options import BACKBONES_HELP, DATASETS, ERSM_DEFAULTS, PBEDROPOUT_DEFAULTS, default_threads
from .protocol import ORDERINGS_EXTRA, EvaluationProtocol
from .settings import ERSM_BIAS_INIT, ERSM_BIAS_REASON

DEFAULT_PROTOCOL = EvaluationProtocol()


def _common(p: argparse.ArgumentParser) -> None:
    """Options of every command."""
    p.add_argument("--threads", type=int, metavar="N", default=None,
                   help="torch CPU threads (default: half the CPUs this process may use, "
                   f"1 to 8: {default_threads()} here; see the README)")


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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (a folder holding a run is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(p)
    p.set_defaults(func="demo")


def _data_arguments(p: argparse.ArgumentParser, title: str) -> None:
    d = p.add_argument_group(title)
    d.add_argument("--data", choices=DATASETS, default="cluttered-digits",
                   help="dataset (default: %(default)s)")
    d.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="cifar10: the cifar-10-batches-py folder; image-folder: the root "
                   "of a class-per-sub-folder tree (CUB-200 images/, Oxford Pets by breed)")
    d.add_argument("--image-size", type=int, metavar="N", default=64,
                   help="image-folder: images are resized to this square; the ERSM authors "
                   "used 224 and 448 (default: %(default)s)")
    d.add_argument("--normalize", choices=("none", "imagenet"), default="none",
                   help="cifar10, image-folder: imagenet normalises with ImageNet's channel "
                   "statistics, as pretrained --weights expect (default: %(default)s)")
    d.add_argument("--val-fraction", type=float, metavar="X", default=0.1,
                   help="cifar10, image-folder: share of the training images held out for "
                   "validation (default: %(default)s)")
    d.add_argument("--bad-images", choices=("raise", "skip"), default="raise",
                   help="image-folder: a file that cannot be decoded stops the run naming it "
                   "(raise) or is left out with a warning (skip) (default: %(default)s)")
    d.add_argument("--num-workers", type=int, metavar="N", default=0,
                   help="cifar10, image-folder: DataLoader worker processes reading the "
                   "images; 0 reads them in the main process (default: %(default)s)")
    d.add_argument("--spurious", action="store_true",
                   help="cluttered-digits: class-correlated backgrounds in train, shuffled in test")
    for split, n in (("train", 5000), ("val", 1000), ("test", 1000)):
        d.add_argument(f"--num-{split}", type=int, metavar="N", default=n,
                       help=f"cluttered-digits: {split} images (default: %(default)s)")
    d.add_argument("--backbone", default="small_cnn", metavar="NAME",
                   help=f"{BACKBONES_HELP} (default: %(default)s)")


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier, optionally with ERSM / PB-EDropout layers",
        description="Train a classifier with Lightning; --ersm / --pbedropout insert layers "
        "after the named blocks (small_cnn: layer1, layer2, layer3); --frozen-backbone runs "
        "the ERSM authors' protocol. Writes a run folder: run.json, last.ckpt (every epoch), "
        "model.ckpt, logs/metrics.csv. A folder that holds a run is refused (--overwrite, "
        "--resume); Ctrl-C keeps the run resumable from its last finished epoch.")
    _data_arguments(p, "data and backbone")
    m = p.add_argument_group("model and training")
    m.add_argument("--weights", type=Path, metavar="FILE",
                   help="local pretrained weights of a torchvision/timm backbone: the full "
                   "model's state dict (the head's keys are ignored); nothing is downloaded")
    m.add_argument("--frozen-backbone", action="store_true",
                   help="the ERSM authors' protocol: the backbone frozen (eval mode, no "
                   "gradients), ERSM before the head (GAP -> linear); trains ERSM and the head "
                   "with the --ersm-* settings")
    m.add_argument("--epochs", type=int, metavar="N", default=5, help="(default: %(default)s)")
    m.add_argument("--batch-size", type=int, metavar="N", default=64, help="(default: %(default)s)")
    m.add_argument("--lr", type=float, metavar="X", default=1e-3, help="AdamW learning rate "
                   "(default: %(default)s)")
    m.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of data, init and training (default: %(default)s)")
    m.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR",
                   help="run folder; refused if it holds a run (default: %(default)s)")
    m.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (its run files are deleted first)")
    m.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the interrupted run in the folder RUN from its last.ckpt, "
                   "with its recorded settings (bit for bit as an uninterrupted run)")
    m.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                   help="Lightning accelerator (default: %(default)s)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = p.add_argument_group("ERSM (Energy-Regularized Spatial Masking)")
    e.add_argument("--ersm", nargs="+", metavar="LAYER", help="insert ERSM after these blocks")
    for flag, name, typ in (("--ersm-lam", "lam", float), ("--ersm-gamma", "gamma", float),
                            ("--ersm-temperature", "temperature", float),
                            ("--ersm-token-size", "token_size", int)):
        e.add_argument(flag, dest=f"ersm_{name}", type=typ, metavar="X" if typ is float else "N",
                       default=ERSM_DEFAULTS[name],
                       help=f"{name} (default: %(default)s)")
    e.add_argument("--ersm-bias-init", dest="ersm_bias_init", type=float, metavar="X",
                   default=ERSM_BIAS_INIT,
                   help=f"initial mask bias (default: %(default)s: {ERSM_BIAS_REASON}; "
                   "--ersm-bias-init 6.0 for the authors' setting)")
    e.add_argument("--ersm-gate", dest="ersm_gate", choices=GATES,
                   default=ERSM_DEFAULTS["gate"],
                   help="mask executed: soft (the authors', X * keep) or hard (ours, not the "
                   "authors': the binary mask 1[keep >= 0.5] in training too, straight-through "
                   "gradient; docs/design.md section 3; measured best with --ersm-temperature "
                   "0.1, which spreads its logits) (default: %(default)s)")

    b = p.add_argument_group("PB-EDropout (patch-based energy dropout)")
    b.add_argument("--pbedropout", nargs="+", metavar="LAYER",
                   help="insert PB-EDropout after these blocks")
    for flag, name, what in (("--pb-p", "p", "drop rate"),
                             ("--pb-patch-size", "patch_size", "patch side"),
                             ("--pb-beta", "beta", "pairwise weight"),
                             ("--pb-population", "population", "K, candidate masks"),
                             ("--pb-generations", "generations", "G, genetic generations")):
        default = PBEDROPOUT_DEFAULTS[name]
        b.add_argument(flag, dest=f"pb_{name}", type=type(default), default=default,
                       metavar="X" if isinstance(default, float) else "N",
                       help=f"{what} (default: %(default)s)")
    b.add_argument("--pb-freeze-epoch", type=int, metavar="N", default=None,
                   help="freeze the masks to their EMA from this epoch on (default: never)")
    _common(p)
    p.set_defaults(func="train")


def _run_arguments(p: argparse.ArgumentParser, num_samples: int | None) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, metavar="DIR",
                       help="run folder written by `energymask train`")
    where.add_argument("--checkpoint", type=Path, metavar="FILE",
                       help="a checkpoint inside a run folder (next to its run.json), or one "
                       "the Lightning API wrote (an ImageClassifier or FrozenBackboneERSM "
                       "trained with the energymask callbacks: give its --backbone and --data)")
    p.add_argument("--num-samples", type=int, metavar="N", default=num_samples,
                   help="use only the first N test images (default: "
                   f"{num_samples or 'all'})")
    p.add_argument("--batch-size", type=int, metavar="N", default=DEFAULT_PROTOCOL.batch_size,
                   help="(default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where results go (default: the run folder, or the folder of a "
                   "Lightning checkpoint)")
    _data_arguments(p, "a checkpoint without run.json: its backbone and data (as in train)")
    p.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of the random ordering and of the occlusions; the data split of "
                   "a checkpoint without run.json (default: %(default)s)")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="deletion test, structured occlusion and mask quality of a run",
        description="Evaluate a trained run on its test split: accuracy; deletion curves at "
        "every ERSM layer; accuracy under structured occlusion (random placement, and on the "
        "object where masks exist); mask quality (IoU, pointing game, entropy, keep ratio) "
        "where masks exist. Checks the checkpoint against run.json's checksum. Writes "
        "evaluation.json into the run folder (the latest results) and keeps every call's "
        "as evaluations/NNN-<protocol>.json.")
    _run_arguments(p, None)
    p.add_argument("--orderings", nargs="+", choices=sorted(ORDERINGS_EXTRA), default=[],
                   metavar="NAME", help="deletion orderings added to energy, magnitude and "
                   "random: gradcam, ablation (Captum LayerGradCam, FeatureAblation)")
    p.add_argument("--steps", type=int, metavar="N", default=DEFAULT_PROTOCOL.steps,
                   help="deletion steps, evenly spaced (default: %(default)s)")
    p.add_argument("--deletion-protocol", choices=DELETION_PROTOCOLS,
                   default=DEFAULT_PROTOCOL.deletion_protocol,
                   help="binary: the authors' forced binary mask; soft: the model's own soft "
                   "keep map with the deleted tokens set to 0 (default: %(default)s)")
    p.add_argument("--sparse", action="store_true",
                   help="deletion steps through the sparse masked-residual model: the residual "
                   "blocks after each ERSM layer compute only at kept tokens and pass deleted "
                   "ones on unchanged (docs/design.md §11; binary protocol only)")
    p.add_argument("--fractions", nargs="+", type=float, metavar="X",
                   default=list(DEFAULT_PROTOCOL.fractions),
                   help="occluded fractions of the image (default: %(default)s)")
    p.add_argument("--patch-size", type=int, metavar="N", default=DEFAULT_PROTOCOL.patch_size,
                   help="occluding patch side in pixels (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("on Lightning's Trainer (RobustnessTests in trainer.test)")
    t.add_argument("--devices", type=int, metavar="N",
                   help="evaluate on N devices (processes) with trainer.test; the results are "
                   "those of one process over the whole set (default: without --devices, "
                   "--strategy and --accelerator, one process and no Trainer)")
    t.add_argument("--strategy", default="auto", metavar="NAME",
                   help="with --devices: Lightning strategy, e.g. ddp, ddp_spawn "
                   "(default: %(default)s)")
    t.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                   help="with --devices: Lightning accelerator (default: %(default)s)")
    _common(p)
    p.set_defaults(func="evaluate")


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="figures of a run into <run>/figures/",
                       description="Draw the training log, the deletion and occlusion curves "
                       "(from evaluation.json) and the masks of a few test images into "
                       "<run>/figures/*.png.")
    _run_arguments(p, 8)
    _common(p)
    p.set_defaults(func="plot")


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


# -- entry point -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":  # what --resume may not change
        args.defaults = vars(parser.parse_args(["train"]))
    commands = importlib.import_module(".commands", __package__)  # torch, Lightning: now
    try:
        commands.set_threads(args.threads)
        return getattr(commands, args.func)(args)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"energymask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except commands.Interrupted as stop:
        print(f"energymask {args.command}: {stop}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
