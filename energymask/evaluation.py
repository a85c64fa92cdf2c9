"""Evaluation in one place: batches, eval mode, accuracy, mask scores, AUC (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Used by the deletion test, occlusion, attribution and the application
(command line, demo, results scripts):

- :data:`ORDERINGS`: the five built-in token orderings of the deletion test, and
  :data:`DEFAULT_FRACTIONS`: the occluded fractions of the occlusion test (both
  defined in :mod:`energymask.constants`).
- :func:`auc`: area under a curve over a fraction axis, normalised to [0, 1].
- :func:`eval_mode`, :func:`split_batch`, :func:`progress_bar`: the batch loop's parts.
- :func:`accuracy` and :func:`evaluate`: top-1 accuracy over samples, and the
  mask scores (:mod:`energymask.mask_quality`) of every ERSM layer averaged
  over samples.

Empty batches (zero samples) are skipped everywhere; a loader that yields no
sample at all is an error, never a NaN.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from energymask.constants import OCCLUSION_FRACTIONS, ORDERINGS
from energymask.ersm import energy_mask_layers
from energymask.mask_quality import layer_mask_scores

__all__ = [
    "DEFAULT_FRACTIONS",
    "ORDERINGS",
    "Evaluation",
    "accuracy",
    "auc",
    "eval_mode",
    "evaluate",
    "progress_bar",
    "split_batch",
]

DEFAULT_FRACTIONS = OCCLUSION_FRACTIONS


def auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``fractions``, divided by the fractions' span.

    The mean level of the curve, in [0, 1] for accuracies: on a grid from 0 to 1
    (the deletion test's default) it is the plain trapezoid area. One point
    gives its value.

    Raises:
        ValueError: no point, lengths that differ, non-finite numbers, or
            fractions that do not strictly increase.
    """
    f = torch.as_tensor([float(v) for v in fractions], dtype=torch.float64)
    v = torch.as_tensor([float(a) for a in values], dtype=torch.float64)
    if f.numel() == 0 or f.numel() != v.numel():
        raise ValueError(
            f"fractions and values must hold the same number (>= 1) of points, but got "
            f"{f.numel()} and {v.numel()}"
        )
    if not (torch.isfinite(f).all() and torch.isfinite(v).all()):
        raise ValueError(f"fractions and values must be finite, but got NaN or Inf in "
                         f"{f.tolist()} / {v.tolist()}")
    if f.numel() == 1:
        return float(v[0])
    if not (f[1:] > f[:-1]).all():
        raise ValueError(f"fractions must increase strictly, but got {f.tolist()}")
    return float(torch.trapezoid(v, f) / (f[-1] - f[0]))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside, the previous mode restored after (warns when it was training)."""
    was_training = model.training
    if was_training:
        warnings.warn("model was in train mode; evaluating in eval mode", stacklevel=3)
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def split_batch(batch) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, y, extra)`` from a batch ``(x, y)`` or ``(x, y, extra, ...)``; extra is None
    for two-element batches (in this project the third element is the object mask)."""
    if isinstance(batch, Tensor) or not isinstance(batch, (list, tuple)) or len(batch) < 2:
        got = type(batch).__name__ if not isinstance(batch, Tensor) else "a tensor"
        raise ValueError(
            f"the dataloader must yield (x, y, ...) batches with labels, but got {got} (no y)"
        )
    return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)


class _Silent:
    """What :func:`progress_bar` returns when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int | None, desc: str, progress: bool | None = None):
    """A progress bar with ``update(n)``, usable in ``with``.

    ``progress``: True (always, needs tqdm), False (never) or None (default:
    when stderr is a terminal, tqdm is installed and ``total`` is known; the
    bar appears only after 2 s, so quick runs stay quiet).
    """
    if progress is False or (progress is None and (total is None or not sys.stderr.isatty())):
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        return _Silent()
    return tqdm(total=total, desc=desc, delay=0.0 if progress else 2.0, leave=False)


def loader_length(loader: Iterable) -> int | None:
    """``len(loader)`` when it has one, else None."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu when it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_model_device(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` on the model's device (:func:`model_device`), as :func:`evaluate` moves its batches.

    The robustness tools call it on every batch, so a CUDA model takes a loader of
    CPU batches.
    """
    return x.to(model_device(model))


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    ``accuracy``: top-1 over samples; ``num_samples``; ``masks[layer][metric]``:
    the mask scores of every ERSM layer averaged over samples (NaN scores of
    an image, e.g. a contrast without background, left out of the mean).
    """

    accuracy: float
    num_samples: int
    masks: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _add_scores(sums: dict[str, list[float]], scores: dict[str, Tensor]) -> None:
    """Add per-image scores (B,) to [sum, count] pairs; NaN images are left out."""
    for name, value in scores.items():
        finite = value[~torch.isnan(value)].double()
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(finite.sum())
        total[1] += finite.numel()


def evaluate(
    model: nn.Module, loader: Iterable, device=None, progress: bool | None = None
) -> Evaluation:
    """Top-1 accuracy over samples and the mask scores of every ERSM layer.

    Args:
        model: classifier (B, C, H, W) -> (B, classes); evaluated in eval mode.
        loader: yields (x, y) or (x, y, object_mask) batches; with object masks
            the scores include IoU, pointing game and the like.
        device: where batches go. Default: the model's device.
        progress: see :func:`progress_bar`. Default: None (on a terminal).

    Raises:
        ValueError: the loader yields no sample (no batch, or only empty ones).
    """
    return _evaluate(model, loader, device, progress, energy_mask_layers(model))


def accuracy(
    model: nn.Module, loader: Iterable, device=None, progress: bool | None = None
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over the samples of ``loader``.

    Same arguments and errors as :func:`evaluate`.
    """
    return _evaluate(model, loader, device, progress, {}).accuracy


def batch_scores(
    model: nn.Module, layers: dict[str, nn.Module], x: Tensor, y: Tensor, extra=None
) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
    """One batch of :func:`evaluate` (model in eval mode, no grad): whether each image is
    classified right (B,) bool, and the per-image mask scores (B,) of every layer in
    ``layers``. ``extra``: the batch's object masks (B, [1,] H, W), or anything else."""
    hits = model(x).argmax(-1) == y
    obj = extra.to(x.device) if isinstance(extra, Tensor) and extra.dim() >= 3 else None
    return hits, {name: layer_mask_scores(layer, obj) for name, layer in layers.items()}


def _evaluate(
    model: nn.Module, loader: Iterable, device, progress: bool | None, layers: dict
) -> Evaluation:
    device = model_device(model) if device is None else torch.device(device)
    sums: dict[str, dict[str, list[float]]] = {name: {} for name in layers}
    correct = total = 0
    bar = progress_bar(loader_length(loader), "evaluate", progress)
    with eval_mode(model), torch.no_grad(), bar:
        for batch in loader:
            x, y, extra = split_batch(batch)
            bar.update()
            if y.shape[0] == 0:
                continue
            hits, scores = batch_scores(model, layers, x.to(device), y.to(device), extra)
            correct += int(hits.sum())
            total += y.shape[0]
            for name in layers:
                _add_scores(sums[name], scores[name])
    if total == 0:
        raise ValueError("loader yielded no sample (no batch, or only empty batches)")
    masks = {
        name: {k: (s / n if n else math.nan) for k, (s, n) in scores.items()}
        for name, scores in sums.items()
    }
    return Evaluation(accuracy=correct / total, num_samples=total, masks=masks)
