"""Run folders of the ``energymask`` command line: what ``train`` writes, ``evaluate`` reads.

A run folder holds::

    run.json          format, status, data, model, callbacks and training settings,
                      test metrics, the SHA-256 of model.ckpt
    model.ckpt        the final Lightning checkpoint (weights and the callbacks' layer states)
    last.ckpt         the resumable checkpoint, rewritten at the end of every epoch
    logs/metrics.csv  the CSVLogger log
    evaluation.json   written by ``energymask evaluate``
    figures/*.png     written by ``energymask plot``
    .lock             held (``flock``) by the process writing the folder

What the folder guarantees (docs/reliability.md): one run per folder
(:func:`claim` refuses a folder that holds a run unless ``overwrite``, and a
folder another process holds), every file replaced atomically (:func:`write_atomic`;
checkpoints through :class:`~energymask.lightning_modules.app.trainer.AtomicCheckpointIO`),
and a checkpoint that is the one training wrote (:func:`check_checkpoint`).

``run.json`` holds plain values only, so the model is rebuilt from it (backbone
name, channels, classes) and :func:`load_for_inference` re-inserts the ERSM /
PB-EDropout layers from the checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import inspect
import io
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energymask.models import Classifier
from energymask.surgery import insertable_names

from ..checkpoint import load_for_inference, read_checkpoint
from ..classifier import FrozenBackboneERSM, ImageClassifier
from ..datamodules import CIFAR10DataModule, ClutteredDigitsDataModule, ImageFolderDataModule
from .backbones import build_backbone
from .trainer import LAST_CHECKPOINT, atomic_replace, temporary_path

FORMAT = "energymask-run/1"
RUN_FILE = "run.json"
CHECKPOINT = "model.ckpt"
METRICS = "logs/metrics.csv"
EVALUATION = "evaluation.json"
LOCK = ".lock"
#: What a run writes into its folder: any of them means the folder holds a run.
RUN_CONTENTS = (RUN_FILE, CHECKPOINT, LAST_CHECKPOINT, "logs", EVALUATION, "figures")
DATASETS = ("cluttered-digits", "cifar10", "image-folder")
#: ImageNet's channel means and standard deviations (``--normalize imagenet``).
IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def default_of(cls: type, name: str) -> Any:
    """The default value of ``cls.__init__``'s argument ``name`` (shown in ``--help``)."""
    return inspect.signature(cls).parameters[name].default


def build_model(backbone: str, in_channels: int, num_classes: int,
                weights: str | Path | None = None) -> Classifier:
    """``Classifier(backbone, F, num_classes)`` (see :mod:`.backbones` for the names)."""
    net, channels = build_backbone(backbone, in_channels, weights)
    return Classifier(net, channels, num_classes)


def build_datamodule(data: dict[str, Any], batch_size: int, seed: int):
    """The DataModule described by ``run.json``'s ``data`` entry.

    ``data["normalize"]``: ``"imagenet"`` normalises user images (CIFAR-10, image
    folders) with :data:`IMAGENET_NORMALIZE`, as pretrained torchvision / timm
    weights expect; absent or ``"none"``: images stay in [0, 1].
    """
    name = data.get("name")
    normalize = IMAGENET_NORMALIZE if data.get("normalize") == "imagenet" else None
    if name == "cluttered-digits":
        return ClutteredDigitsDataModule(
            data["num_train"], data["num_val"], data["num_test"], spurious=data["spurious"],
            seed=seed, batch_size=batch_size, with_masks=True,
        )  # fmt: skip
    if name in ("cifar10", "image-folder") and not data.get("data_dir"):
        raise ValueError(f"--data {name} needs --data-dir, the folder holding the data")
    loading = {"num_workers": data.get("num_workers", 0),
               "val_fraction": data.get("val_fraction", 0.1)}  # absent in older run.json
    if name == "cifar10":
        return CIFAR10DataModule(data["data_dir"], seed=seed, batch_size=batch_size,
                                 normalize=normalize, **loading)
    if name == "image-folder":
        size = data["image_size"]
        return ImageFolderDataModule(data["data_dir"], size=(size, size), seed=seed,
                                     batch_size=batch_size, normalize=normalize,
                                     bad_images=data.get("bad_images", "raise"), **loading)
    raise ValueError(f"data must be one of {list(DATASETS)}, but got {name!r}")


def qualify_layers(model: nn.Module, in_channels: int, names: list[str], option: str) -> list[str]:
    """Names of the LightningModule (``model.backbone.layer2``) from short ones.

    ``layer2`` means ``backbone.layer2``; any name of ``model.named_modules()``
    with a 4D output is accepted too, and so are the returned names themselves.
    """
    probe = torch.zeros(1, in_channels, 64, 64)
    valid = insertable_names(model, probe)
    out = []
    for name in names:
        name = name.removeprefix("model.")
        full = name if name in valid else f"backbone.{name}"
        if full not in valid:
            short = [n.removeprefix("backbone.") for n in valid if n.count(".") == 1]
            raise ValueError(f"{option}: unknown layer {name!r}; choose from {', '.join(short)} "
                             f"(or any of {', '.join(valid)})")
        out.append(f"model.{full}")
    return out


def example_images(model: nn.Module, shape: tuple[int, ...], option: str) -> torch.Tensor:
    """``zeros(1, *shape)``, checked by one forward of ``model``.

    ``ValueError`` naming ``option`` and the smallest square size (found by
    bisection over forwards of 1 image) the backbone works on, when its feature
    map vanishes for images of ``shape`` (C, H, W).
    """
    def works(h: int, w: int) -> str | None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, shape[0], h, w))
        except RuntimeError as err:
            return str(err).splitlines()[0]
        return None

    was_training = model.training
    model.eval()
    try:
        error = works(*shape[1:])
        if error is not None:
            high = next((2 ** k for k in range(1, 13) if works(2 ** k, 2 ** k) is None), None)
            need = "no size up to 4096 works"
            if high is not None:
                low = high // 2  # fails (or is 1)
                while high - low > 1:
                    mid = (low + high) // 2
                    low, high = (low, mid) if works(mid, mid) is None else (mid, high)
                need = f"it needs images of at least {high}x{high}"
            raise ValueError(f"{option}: the backbone's feature map vanishes for images of "
                             f"{shape[1]}x{shape[2]} ({error}); {need}")
    finally:
        model.train(was_training)
    return torch.zeros(1, *shape)


def output_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``model(x)`` (a backbone's feature map), in eval mode without gradients."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        model.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


def prepare_out(path: str | Path) -> Path:
    """Create the folder ``path`` and check that a file can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".energymask-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {str(path)!r} is not writable "
                              f"({err.strerror or err})") from err
    return path


def holds_run(path: Path) -> list[str]:
    """The names of :data:`RUN_CONTENTS` present in the folder ``path``."""
    return [name for name in RUN_CONTENTS if (path / name).exists()]


@contextlib.contextmanager
def claim(path: str | Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold the run folder ``path`` for one process; yields the folder.

    The lock (``flock`` on ``path/.lock``) is taken before anything is written and
    released when the block ends, also when the process dies. A folder that holds
    a run is refused unless ``overwrite`` (its run files are then deleted, other
    files are left alone) or ``resume`` (kept as it is).

    Raises:
        PermissionError: the folder is not writable.
        ValueError: another process holds the folder, or it holds a run.
    """
    path = prepare_out(path)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ValueError(f"run folder {str(path)!r} is in use by another energymask "
                             f"process (pid {holder}, lock {str(path / LOCK)!r}); wait for it "
                             "or choose another --out") from None
        found = holds_run(path)
        if found and not (overwrite or resume):
            raise ValueError(f"--out {str(path)!r} already holds a run ({', '.join(found)}); "
                             "choose another folder, continue it with --resume, or replace "
                             "it with --overwrite")
        if found and overwrite:
            for name in found:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_run(path: Path, spec: dict[str, Any]) -> None:
    write_atomic(path / RUN_FILE, json.dumps({"format": FORMAT, **spec}, indent=2) + "\n")


def truncate_log(log: Path, epoch: int) -> None:
    """Drop the rows of ``epoch`` and later from the CSV log (the resumed run rewrites them)."""
    if not log.is_file():
        return
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(r for r in rows if r.get("epoch", "") == "" or int(r["epoch"]) < epoch)
    write_atomic(log, out.getvalue())


def read_run(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(run folder, run.json)`` from a run folder or a checkpoint file inside one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    folder = path if path.is_dir() else path.parent
    what = f"{str(path)!r} is not an energymask run: expected {RUN_FILE}"
    where = "in it" if path.is_dir() else "next to it"
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise ValueError(f"{what} {where} (written by `energymask train`)")
    try:
        spec = json.loads(run_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} with valid JSON, but {str(run_file)!r} is not ({err})") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{what} with \"format\": \"{FORMAT}\", but {str(run_file)!r} has none")
    return folder, spec


def require_entries(folder: Path, spec: dict[str, Any]) -> None:
    """Refuse a ``run.json`` without the ``data``, ``model`` and ``training`` entries."""
    missing = [k for k in ("data", "model", "training") if not isinstance(spec.get(k), dict)]
    if not missing and not isinstance(spec["model"].get("backbone"), str):
        missing = ["model.backbone"]
    if missing:
        raise ValueError(f"{str(folder / RUN_FILE)!r} lacks the entries {missing} that "
                         "`energymask train` writes (edited or written by another program?)")


def sha256(path: Path) -> str:
    """The SHA-256 of the file ``path``, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint(path: Path, expected_sha256: str | None = None) -> None:
    """Refuse a checkpoint that is missing or is not the file ``run.json`` recorded.

    Whether the file is a readable checkpoint at all is
    :func:`~energymask.lightning_modules.checkpoint.read_checkpoint`'s to say.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: its SHA-256 differs from ``expected_sha256`` (changed or damaged).
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if expected_sha256 is not None and (found := sha256(path)) != expected_sha256:
        raise ValueError(f"checkpoint {str(path)!r} is not the one training wrote: its SHA-256 "
                         f"is {found[:12]}..., run.json records {expected_sha256[:12]}... "
                         "(changed, truncated or damaged since)")


def load_model(spec: dict[str, Any], checkpoint: Path) -> ImageClassifier:
    """The trained module of a run, with its inserted layers, in eval mode.

    ``spec["model"]`` names the backbone; with ``"frozen_backbone": true`` the
    module is the authors' :class:`FrozenBackboneERSM`, else an :class:`ImageClassifier`.
    """
    m = spec["model"]
    try:
        if m.get("frozen_backbone"):
            net, _ = build_backbone(m["backbone"], m["in_channels"])
            return load_for_inference(checkpoint, FrozenBackboneERSM, backbone=net)
        model = build_model(m["backbone"], m["in_channels"], m["num_classes"])
        return load_for_inference(checkpoint, ImageClassifier, model=model)
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError,
            EOFError) as err:
        raise ValueError(f"{str(checkpoint)!r} is not an energymask checkpoint of this run "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err


def checkpoint_model(checkpoint: Path) -> dict[str, Any]:
    """``{"num_classes", "frozen_backbone"}`` of a checkpoint the Lightning API wrote.

    Such a checkpoint (a ``ModelCheckpoint`` file of an :class:`ImageClassifier` or
    :class:`FrozenBackboneERSM`) has no ``run.json``; its hyper-parameters give the
    classes and the module class, the command line gives the backbone and the data.
    """
    hp = read_checkpoint(checkpoint).get("hyper_parameters")
    if not isinstance(hp, dict) or "num_classes" not in hp:
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a Lightning checkpoint of an "
                         "ImageClassifier or FrozenBackboneERSM (no num_classes hyper-parameter)")
    return {"num_classes": hp["num_classes"], "frozen_backbone": "num_features" in hp}
