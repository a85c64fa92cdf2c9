"""The commands of the ``energymask`` command line (parsers: :mod:`.cli`).

Each command takes the parsed ``argparse.Namespace`` and returns the exit status;
expected errors are raised as ``ValueError`` / ``FileNotFoundError`` /
``PermissionError`` (the entry point prints them), Ctrl-C during ``train`` as
:class:`Interrupted`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from energymask.ersm import energy_mask_layers
from energymask.pbedropout import PBEDropout2d

from .. import _compat
from .._compat import Callback
from . import building
from . import runs as _runs

#: ``train`` options that may change when a run is resumed (they do not change the result).
RESUME_MAY_CHANGE = ("resume", "no_progress", "accelerator", "func", "command", "defaults",
                     "threads")


class Interrupted(Exception):
    """``train`` was stopped by Ctrl-C; the message says how to resume."""


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``, or :func:`.options.default_threads`; returns it."""
    from .options import default_threads

    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be an int >= 1, but got {threads!r}")
    torch.set_num_threads(threads)
    return threads


# -- demo -------------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    with _runs.claim(args.out, overwrite=args.overwrite, resumable=False) as out:
        run_demo(out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"energymask demo: results in {out}")
    return 0


# -- train ------------------------------------------------------------------------------------

def _data_spec(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"name": args.data}
    if args.data == "cluttered-digits":
        data.update(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                    spurious=args.spurious)
    else:
        data["data_dir"] = str(args.data_dir.resolve()) if args.data_dir else None
        data["normalize"] = args.normalize
        data["val_fraction"] = args.val_fraction
        if args.data == "image-folder":
            data["image_size"] = args.image_size
            data["bad_images"] = args.bad_images
        data["num_workers"] = args.num_workers
    return data


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """``run.json``'s settings from the ``train`` options (checked; no model built)."""
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, but got "
                             f"{getattr(args, flag)}")
    if args.frozen_backbone and (args.ersm or args.pbedropout):
        raise ValueError("--frozen-backbone places ERSM before the head itself; it does not "
                         "combine with --ersm / --pbedropout")
    spec: dict[str, Any] = {
        "data": _data_spec(args),
        "model": {"backbone": args.backbone, "frozen_backbone": args.frozen_backbone,
                  "weights": str(args.weights.resolve()) if args.weights else None},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "seed": args.seed},
    }
    ersm = {k: getattr(args, f"ersm_{k}")
            for k in ("lam", "gamma", "temperature", "token_size", "bias_init", "gate")}
    if args.ersm or args.frozen_backbone:
        spec["ersm"] = {"layers": args.ersm or [], **ersm}
    if args.pbedropout:
        spec["pbedropout"] = {"layers": args.pbedropout, "freeze_at_epoch": args.pb_freeze_epoch,
                              **{k: getattr(args, f"pb_{k}") for k in
                                 ("p", "patch_size", "beta", "population", "generations")}}
    return spec


def _build(spec: dict[str, Any], weights: bool = True):
    """``(module, callbacks, datamodule)`` from ``run.json``'s settings; fills ``spec["model"]``.

    ``weights``: load ``--weights`` (a resumed run takes them from its checkpoint).
    """
    from ..classifier import FrozenBackboneERSM, ImageClassifier
    from ..ersm_callback import ERSMCallback, check_token_fits
    from ..pbedropout_callback import PBEDropoutCallback
    from .backbones import build_backbone

    t, m = spec["training"], spec["model"]
    dm = building.build_datamodule(spec["data"], t["batch_size"], t["seed"])
    _compat.lightning().seed_everything(t["seed"], workers=True, verbose=False)
    m.update(in_channels=dm.in_channels, num_classes=dm.num_classes)
    path = m["weights"] if weights else None
    ersm = {k: v for k, v in spec.get("ersm", {}).items() if k != "layers"}
    dm.setup("fit")  # the image shape; checks before anything large is built
    shape = tuple(dm.train_set[0][0].shape)
    option = f"--image-size {spec['data']['image_size']}" if "image_size" in spec["data"] else (
        f"--data {spec['data'].get('name')}")
    if m["frozen_backbone"]:
        net, channels = build_backbone(m["backbone"], dm.in_channels, path)
        grid = building.output_grid(net, building.example_images(net, shape, option))
        check_token_fits(ersm.get("token_size", 1), "of the backbone", grid)
        module = FrozenBackboneERSM(net, channels, dm.num_classes, lr=t["lr"],
                                    max_epochs=t["epochs"], **ersm)
        return module, [], dm
    model = building.build_model(m["backbone"], dm.in_channels, dm.num_classes, path)
    callbacks: list[Callback] = []
    if spec.get("ersm"):
        layers = building.qualify_layers(model, dm.in_channels, spec["ersm"]["layers"], "--ersm")
        callbacks.append(ERSMCallback(layers, **ersm))
        spec["ersm"]["layers"] = layers
    if spec.get("pbedropout"):
        pb = dict(spec["pbedropout"])
        layers = building.qualify_layers(model, dm.in_channels, pb.pop("layers"), "--pbedropout")
        callbacks.append(PBEDropoutCallback(layers, **pb))
        spec["pbedropout"]["layers"] = layers
    module = ImageClassifier(model, dm.num_classes, lr=t["lr"], max_epochs=t["epochs"])
    module.example_input_array = building.example_images(model, shape, option)
    for callback in callbacks:  # e.g. an ERSM token larger than the feature map
        callback.check_grids(module)
    return module, callbacks, dm


def _resume_spec(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    defaults = args.defaults  # the parser's (cli.main sets them)
    changed = [k for k, v in vars(args).items()
               if k not in RESUME_MAY_CHANGE and v != defaults.get(k)]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ValueError(f"--resume continues a run with the settings in its run.json; "
                         f"remove {flags}")
    folder, spec = _runs.read_run(args.resume)
    _runs.require_entries(folder, spec)
    if spec.get("status") == "complete":
        raise ValueError(f"run {str(folder)!r} is complete; nothing to resume")
    return folder, spec


def _last_epoch(checkpoint: Path) -> int:
    """The epoch a resumable checkpoint ends (0-based), read without running code."""
    from ..checkpoint import read_checkpoint

    epoch = read_checkpoint(checkpoint).get("epoch")
    if not isinstance(epoch, int):
        raise ValueError(f"checkpoint {str(checkpoint)!r} cannot be resumed: it records no "
                         "epoch (not written by Lightning's Trainer)")
    return epoch


def _fit(trainer, module, dm, ckpt_path: Path | None) -> bool:
    """``trainer.fit``; True when Ctrl-C stopped it (Lightning shuts down, then exits)."""
    TrainerStatus = _compat.lightning("trainer.states").TrainerStatus  # noqa: N806

    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning leaves Ctrl-C ignored
    return trainer.state.status == TrainerStatus.INTERRUPTED


def _failing_as_usage(build, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``; Lightning's refusal of a setting (``--accelerator gpu``
    without a GPU) becomes a ``ValueError``: an error message, not a traceback."""
    refused = _compat.lightning("utilities.exceptions").MisconfigurationException
    try:
        return build(*args, **kwargs)
    except refused as err:
        raise ValueError(str(err)) from err


def train(args: argparse.Namespace) -> int:
    from .trainer import build_trainer

    TrainerStatus = _compat.lightning("trainer.states").TrainerStatus  # noqa: N806
    if args.resume is not None:
        out, spec = _resume_spec(args)
    else:
        out, spec = args.out, _spec(args)
    module, callbacks, dm = _build(spec, weights=args.resume is None)
    with _runs.claim(out, overwrite=args.overwrite, resume=args.resume is not None):
        last = out / _runs.LAST_CHECKPOINT
        resume_from = last if args.resume is not None and last.exists() else None
        if args.resume is not None:  # the log keeps the epochs the checkpoint holds
            _runs.truncate_log(out / _runs.METRICS, _last_epoch(last) + 1 if resume_from else 0)
        spec.update(status="running", checkpoint=_runs.CHECKPOINT, metrics_csv=_runs.METRICS,
                    accelerator=args.accelerator)
        _runs.write_run(out, spec)
        trainer = None
        try:
            trainer = _failing_as_usage(build_trainer, spec["training"]["epochs"], callbacks,
                                        args.accelerator, not args.no_progress,
                                        log_dir=out / "logs", run_dir=out)
            if _fit(trainer, module, dm, resume_from):
                raise KeyboardInterrupt
            trainer.save_checkpoint(out / _runs.CHECKPOINT, weights_only=False)  # + callbacks
            tested = trainer.test(module, datamodule=dm, verbose=False)
        except Exception as err:  # a failed start is retried without --overwrite
            spec.update(status="failed", error=f"{type(err).__name__}: {err}",
                        failed_before_first_epoch=not last.exists())
            _runs.write_run(out, spec)
            raise
        except (KeyboardInterrupt, SystemExit) as stop:
            if trainer is None or (isinstance(stop, SystemExit)
                                   and trainer.state.status != TrainerStatus.INTERRUPTED):
                raise
            (out / _runs.CHECKPOINT).unlink(missing_ok=True)
            spec.update(status="interrupted", interrupted_in_epoch=trainer.current_epoch)
            _runs.write_run(out, spec)
            where = (f"the end of epoch {_last_epoch(last) + 1}" if last.exists()
                     else "the start")
            raise Interrupted(f"interrupted in epoch {trainer.current_epoch + 1}; "
                              f"`energymask train --resume {out}` continues from {where} "
                              f"({_runs.LAST_CHECKPOINT})") from None
        spec.update(status="complete", checkpoint_sha256=_runs.sha256(out / _runs.CHECKPOINT),
                    test={k: float(v) for k, v in (tested[0] if tested else {}).items()})
        _runs.write_run(out, spec)
    print(f"energymask train: run written to {out} "
          f"(test accuracy {spec['test'].get('test_acc', float('nan')):.3f})")
    return 0


# -- evaluate and plot ------------------------------------------------------------------------

def _load(args: argparse.Namespace):
    """``(output folder, model in eval mode, test set, has object masks)``.

    From ``--run`` / ``--checkpoint`` inside a run folder (the checkpoint checked
    against run.json's SHA-256), or from a Lightning checkpoint without run.json
    and the ``--backbone`` / ``--data`` options.
    """
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, but got {args.num_samples}")
    path = args.run or args.checkpoint
    if args.checkpoint is not None and not (args.checkpoint.parent / _runs.RUN_FILE).exists():
        checkpoint = args.checkpoint
        model = {"backbone": args.backbone, **building.checkpoint_model(checkpoint)}
        dm = building.build_datamodule(_data_spec(args), args.batch_size, args.seed)
        model["in_channels"] = dm.in_channels
        module = building.load_model({"model": model}, checkpoint)
        folder = args.out or checkpoint.parent
    else:
        folder, spec = _runs.read_run(path)
        _runs.require_entries(folder, spec)
        if args.checkpoint is None and spec.get("status", "complete") != "complete":
            raise ValueError(f"run {str(folder)!r} is not complete (status "
                             f"{spec['status']!r}); continue it with `energymask train "
                             f"--resume {folder}`")
        checkpoint = args.checkpoint or folder / spec.get("checkpoint", _runs.CHECKPOINT)
        recorded = spec.get("checkpoint_sha256") if checkpoint.name == _runs.CHECKPOINT else None
        _runs.check_checkpoint(checkpoint, recorded)
        module = building.load_model(spec, checkpoint)
        dm = building.build_datamodule(spec["data"], args.batch_size, spec["training"]["seed"])
        folder = args.out or folder
    dm.setup("test")
    test = dm.test_set
    if args.num_samples is not None:
        test = Subset(test, range(min(args.num_samples, len(test))))
    return Path(folder), module, test, dm.has_object_masks


def _protocol(args: argparse.Namespace):
    from energymask.constants import ORDERINGS

    from .protocol import BASE_ORDERINGS, ORDERINGS_EXTRA, EvaluationProtocol

    extra = {ORDERINGS_EXTRA[o] for o in args.orderings}  # the Captum ones asked for
    try:
        return EvaluationProtocol(
            orderings=tuple(o for o in ORDERINGS if o in BASE_ORDERINGS or o in extra),
            steps=args.steps, deletion_protocol=args.deletion_protocol,
            fractions=tuple(args.fractions), patch_size=args.patch_size,
            batch_size=args.batch_size, seed=args.seed, sparse=getattr(args, "sparse", False),
            num_workers=getattr(args, "num_workers", 0))
    except ValueError as err:  # name the option, not the field
        for field in ("steps", "patch_size", "batch_size", "fractions"):
            if str(err).startswith(field):
                raise ValueError(f"--{field.replace('_', '-')}{str(err)[len(field):]}") from None
        raise


def evaluate(args: argparse.Namespace) -> int:
    from .evaluating import evaluate_run

    protocol = _protocol(args)
    folder, module, test_set, with_masks = _load(args)
    if args.devices is not None or (args.strategy, args.accelerator) != ("auto", "auto"):
        if protocol.sparse:
            raise ValueError("--sparse runs in one process: drop --devices, --strategy and "
                             "--accelerator")
        return _evaluate_on_trainer(args, protocol, folder, module, test_set, with_masks)
    with _runs.claim(folder, resume=True):
        result = {"run": str(folder), **evaluate_run(module.model, test_set, protocol,
                                                     with_masks, progress=not args.no_progress)}
        text = json.dumps(result, indent=2) + "\n"
        kept = _runs.keep_evaluation(folder, text, protocol.deletion_protocol)
        _runs.write_atomic(folder / _runs.EVALUATION, text)
    print(_table(result))
    print(f"energymask evaluate: wrote {folder / _runs.EVALUATION} (kept as {kept})")
    return 0


class _WriteEvaluation(Callback):
    """Writes evaluation.json and prints the table on global rank 0, at the end of
    ``trainer.test`` (under ddp_spawn the results exist only in the spawned processes)."""

    def __init__(self, tests, folder: Path, protocol) -> None:
        self.tests, self.folder, self.protocol = tests, folder, protocol

    def on_test_end(self, trainer, pl_module) -> None:
        from .evaluating import deterministic_drop_rate

        if trainer.global_rank != 0:
            return
        net = pl_module.model
        result = {"run": str(self.folder), "protocol": self.protocol.to_dict(),
                  **self.tests.results.to_dict()}
        result["pbedropout"] = {
            name: {"deterministic_drop_rate": deterministic_drop_rate(layer)}
            for name, layer in net.named_modules()
            if isinstance(layer, PBEDropout2d) and layer.ema_mask.numel()
        }  # fmt: skip
        text = json.dumps(result, indent=2) + "\n"
        _runs.keep_evaluation(self.folder, text, self.protocol.deletion_protocol)
        _runs.write_atomic(self.folder / _runs.EVALUATION, text)
        print(_table(result))
        print(f"energymask evaluate: wrote {self.folder / _runs.EVALUATION} "
              f"({trainer.world_size} processes)")


def _evaluate_on_trainer(args: argparse.Namespace, protocol, folder: Path, module, test_set,
                         with_masks: bool) -> int:
    """``evaluate --devices N``: the same tests through RobustnessTests in ``trainer.test``
    on any strategy; the launching process holds the folder, rank 0 writes the file once."""
    from ..robustness_callback import RobustnessTests
    from .trainer import quiet_lightning

    pl = _compat.lightning()
    rank_zero_only = _compat.lightning("utilities.rank_zero").rank_zero_only

    devices = 1 if args.devices is None else args.devices
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, but got {devices}")
    tests = RobustnessTests(
        deletion={"orderings": list(protocol.orderings), "steps": protocol.steps,
                  "protocol": protocol.deletion_protocol},
        occlusion={"fractions": list(protocol.fractions), "patch_size": protocol.patch_size,
                   "placement": [p for p in protocol.placements if p != "object" or with_masks]},
        model="model", seed=protocol.seed, stages=("test",))
    writer = _WriteEvaluation(tests, folder, protocol)
    loader = DataLoader(test_set, batch_size=protocol.batch_size,
                        num_workers=protocol.num_workers)
    quiet_lightning()
    trainer = pl.Trainer(accelerator=args.accelerator, devices=devices,
                         strategy=args.strategy, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=not args.no_progress,
                         callbacks=[tests, writer])
    launcher = rank_zero_only.rank == 0  # ddp runs this command again in each other rank
    with _runs.claim(folder, resume=True) if launcher else contextlib.nullcontext():
        trainer.test(module, dataloaders=loader, verbose=False)
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
        lines.append(f"PB-EDropout at {layer}: deterministic masks drop "
                     f"{q['deterministic_drop_rate']:.3f} of the patches")
    return "\n".join(lines)


def _save(fig, path: Path, written: list[Path]) -> None:
    written.append(_runs.save_figure(fig, path))


def _evaluation_problem(result: Any) -> str | None:
    """What makes ``result`` differ from what ``energymask evaluate`` writes, or None."""
    from dataclasses import fields

    from energymask.deletion import DeletionResult

    names = {f.name for f in fields(DeletionResult)}
    required = names - {"settings", "protocol"}
    if not isinstance(result, dict):
        return f"a {type(result).__name__}, not an object"
    if not isinstance(result.get("accuracy"), (int, float)):
        return "no number under 'accuracy'"
    deletion, occlusion = result.get("deletion", {}), result.get("occlusion", {})
    if not (isinstance(deletion, dict) and all(
            isinstance(d, dict) and required <= d.keys() <= names for d in deletion.values())):
        return f"'deletion' is not a {{layer: {{{', '.join(sorted(required))}}}}} map"
    if not (isinstance(occlusion, dict) and all(
            isinstance(d, dict) and isinstance(d.get("fractions"), list)
            and isinstance(d.get("accuracy"), dict) and isinstance(d["accuracy"].get("model"), list)
            for d in occlusion.values())):
        return "'occlusion' is not a {placement: {fractions, accuracy: {model}}} map"
    return None


def _read_evaluation(path: Path) -> dict[str, Any]:
    """``evaluation.json`` as ``energymask evaluate`` writes it, else ``ValueError`` saying what
    differs (checked before any figure is drawn)."""
    try:
        result = json.loads(path.read_text())
        problem = _evaluation_problem(result)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"not valid JSON ({err})"
    if problem is not None:
        raise ValueError(f"{str(path)!r} is not an evaluation.json of `energymask evaluate`: "
                         f"{problem}; run `energymask evaluate --run {path.parent}` again")
    return result


#: ``plot``'s training panels, as the demo's (those the log has).
TRAINING_PANELS = ("loss", "acc", "keep_ratio", "hard_sparsity", "drop_rate")


def plot(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from energymask import viz
    from energymask.deletion import DeletionResult

    folder, module, test_set, with_masks = _load(args)
    loader = DataLoader(test_set, batch_size=args.batch_size, num_workers=args.num_workers)
    written: list[Path] = []
    with _runs.claim(folder, resume=True):
        figures = _runs.prepare_out(folder / "figures")
        log = folder / _runs.METRICS
        if log.is_file():  # as the demo's: one panel per metric, train and val in it
            wanted = viz.matching_metrics(log, TRAINING_PANELS)
            if wanted:
                fig = viz.plot_training_log(log, metrics=wanted)[0]
                fig.suptitle(f"{folder.name}: training")
                _save(fig, figures / "training.png", written)
        net = module.model
        batch = next(iter(loader))
        with torch.no_grad():
            logits = net(batch[0])  # the forward also fills the keep maps
        chance, predicted = 1 / logits.shape[-1], logits.argmax(-1)
        evaluation = folder / _runs.EVALUATION
        if evaluation.is_file():
            result = _read_evaluation(evaluation)
            deletion = result.get("deletion", {})
            if deletion:
                fig = Figure(figsize=(6.5 * len(deletion), 3.8), layout="constrained")
                for ax, (layer, d) in zip(fig.subplots(1, len(deletion), squeeze=False)[0],
                                          deletion.items(), strict=True):
                    viz.plot_curves(DeletionResult(**d), ax=ax, title=f"deletion at {layer}",
                                    clean=result["accuracy"], chance=chance)
                fig.suptitle(f"{folder.name}: deletion test")
                _save(fig, figures / "deletion.png", written)
            occlusion = result.get("occlusion", {})
            if occlusion:
                fractions = {p: d["fractions"] for p, d in occlusion.items()}
                curves = {p: {"model": d["accuracy"]["model"]} for p, d in occlusion.items()}
                fig = viz.plot_occlusion_placements(fractions, curves, chance=chance)[0]
                fig.suptitle(f"{folder.name}: accuracy under structured occlusion")
                _save(fig, figures / "occlusion.png", written)
        else:
            print(f"energymask plot: no evaluation.json in {folder}: run `energymask evaluate "
                  f"--run {folder}` first for the deletion and occlusion figures")
        for name, layer in energy_mask_layers(net).items():
            fig = viz.plot_mask_grid(batch[0], layer.last_keep,
                                     batch[2] if with_masks else None, labels=batch[1],
                                     predictions=predicted)[0]
            fig.suptitle(f"{folder.name}: ERSM keep map at {name}")
            _save(fig, figures / f"masks_{name.replace('.', '_')}.png", written)
        for name, layer in net.named_modules():
            if isinstance(layer, PBEDropout2d) and layer.ema_mask.numel():
                dropped = 1 - layer.deterministic_mask()[0]
                _save(viz.plot_ema_masks(layer.ema_mask, layer=name, p=layer.p,
                                         dropped=dropped)[0],
                      figures / f"ema_masks_{name.replace('.', '_')}.png", written)
    for path in written:
        print(path)
    return 0


__all__ = ["Interrupted", "demo", "evaluate", "plot", "set_threads", "train"]
