"""Run folders of the ``energymask`` command line: what ``train`` writes, ``evaluate`` reads.

A run folder holds::

    run.json          format, data, model, callbacks and training settings, test metrics
    model.ckpt        the Lightning checkpoint (weights and the callbacks' layer states)
    logs/metrics.csv  the CSVLogger log
    evaluation.json   written by ``energymask evaluate``
    figures/*.png     written by ``energymask plot``

``run.json`` holds plain values only, so the model is rebuilt from it (backbone
name, channels, classes) and :func:`load_for_inference` re-inserts the ERSM /
PB-EDropout layers from the checkpoint.
"""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energymask.models import Classifier, shallow_cnn, small_cnn
from energymask.surgery import insertable_names

from ..checkpoint import load_for_inference
from ..classifier import ImageClassifier
from ..datamodules import CIFAR10DataModule, ClutteredDigitsDataModule, ImageFolderDataModule

FORMAT = "energymask-run/1"
RUN_FILE = "run.json"
CHECKPOINT = "model.ckpt"
METRICS = "logs/metrics.csv"
BACKBONES = {"small_cnn": small_cnn, "shallow_cnn": shallow_cnn}
DATASETS = ("cluttered-digits", "cifar10", "image-folder")


def default_of(cls: type, name: str) -> Any:
    """The default value of ``cls.__init__``'s argument ``name`` (shown in ``--help``)."""
    return inspect.signature(cls).parameters[name].default


def build_model(backbone: str, in_channels: int, num_classes: int) -> Classifier:
    """``Classifier(BACKBONES[backbone](in_channels), ..., num_classes)``."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, but got {backbone!r}")
    net = BACKBONES[backbone](in_channels)
    return Classifier(net, net.out_channels, num_classes)


def build_datamodule(data: dict[str, Any], batch_size: int, seed: int):
    """The DataModule described by ``run.json``'s ``data`` entry."""
    name = data.get("name")
    if name == "cluttered-digits":
        return ClutteredDigitsDataModule(
            data["num_train"], data["num_val"], data["num_test"], spurious=data["spurious"],
            seed=seed, batch_size=batch_size, with_masks=True,
        )  # fmt: skip
    if name in ("cifar10", "image-folder") and not data.get("data_dir"):
        raise ValueError(f"--data {name} needs --data-dir, the folder holding the data")
    if name == "cifar10":
        return CIFAR10DataModule(data["data_dir"], seed=seed, batch_size=batch_size)
    if name == "image-folder":
        size = data["image_size"]
        return ImageFolderDataModule(data["data_dir"], size=(size, size), seed=seed,
                                     batch_size=batch_size)
    raise ValueError(f"data must be one of {list(DATASETS)}, but got {name!r}")


def qualify_layers(model: nn.Module, in_channels: int, names: list[str], option: str) -> list[str]:
    """Names of the LightningModule (``model.backbone.layer2``) from short ones.

    ``layer2`` means ``backbone.layer2``; any name of ``model.named_modules()``
    with a 4D output is accepted too.
    """
    probe = torch.zeros(1, in_channels, 32, 32)
    valid = insertable_names(model, probe)
    out = []
    for name in names:
        full = name if name in valid else f"backbone.{name}"
        if full not in valid:
            short = [n.removeprefix("backbone.") for n in valid if n.count(".") == 1]
            raise ValueError(f"{option}: unknown layer {name!r}; choose from {', '.join(short)} "
                             f"(or any of {', '.join(valid)})")
        out.append(f"model.{full}")
    return out


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


def write_run(path: Path, spec: dict[str, Any]) -> None:
    (path / RUN_FILE).write_text(json.dumps({"format": FORMAT, **spec}, indent=2) + "\n")


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


def load_model(spec: dict[str, Any], checkpoint: Path) -> ImageClassifier:
    """The trained :class:`ImageClassifier` of a run, with its inserted layers, in eval mode."""
    m = spec["model"]
    model = build_model(m["backbone"], m["in_channels"], m["num_classes"])
    try:
        return load_for_inference(checkpoint, ImageClassifier, model=model)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as err:
        raise ValueError(f"{str(checkpoint)!r} is not an energymask checkpoint of this run "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
