"""Deletion and insertion curves at an ERSM layer (docs/design.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Tokens of the ERSM layer are deleted in the order given by an ordering (see
:mod:`energymask.orderings`) and accuracy is recorded after k deletions, for k
over a step grid. AUC: :func:`energymask.evaluation.auc` over the deleted
fraction k / N. Two protocols:

- ``"binary"`` (default, the authors'): the keep map is replaced by a forced
  binary mask (1 keep, 0 delete); at k = 0 the head sees an all-ones mask it
  never saw in training, so the curve need not start at the clean accuracy.
- ``"soft"``: the model's own soft keep map, with deleted tokens set to 0
  (keep × mask); at k = 0 it is the clean model (for a layer with
  ``hard_inference=True`` the soft map is used, not the thresholded one).

Fast path (``method="fast"``): the network is cut at the layer from what its
forward executes (:mod:`energymask.split`): one prefix run per batch, then
only the layer and what follows run, ``steps_per_forward`` masks stacked along
the batch. Captum orderings (Grad-CAM, FeatureAblation) use the same cut. When
no exact cut is found the naive path runs, with a warning that says why.
``method="naive"`` runs the full model once per step and ordering. Both give
the same curves.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from energymask.constants import DELETION_PROTOCOLS, ORDERINGS
from energymask.ersm import EnergyMask2d, energy_mask_layers, forcing
from energymask.evaluation import (
    auc,
    eval_mode,
    loader_length,
    progress_bar,
    split_batch,
    to_model_device,
)
from energymask.orderings import check_orderings, compute_scores
from energymask.sparse import sparse_copy
from energymask.split import CannotSplit, Split, split_at

__all__ = ["DeletionResult", "deletion_curve", "insertion_curve", "find_ersm_layer"]

METHODS = ("fast", "naive")
MODES = ("deletion", "insertion")


@dataclass
class DeletionResult:
    """Curves (accuracy per step) and AUC per ordering.

    ``steps``: tokens deleted (deletion) or inserted (insertion); ``fractions``:
    steps / N; ``curves[name][i]``: accuracy at ``steps[i]``; ``auc[name]``;
    ``protocol``: ``"binary"`` (forced binary mask) or ``"soft"`` (soft keep × mask).
    """

    mode: str
    steps: list[int]
    fractions: list[float]
    curves: dict[str, list[float]]
    auc: dict[str, float]
    num_tokens: int
    num_samples: int
    settings: dict = field(default_factory=dict)
    protocol: str = "binary"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def find_ersm_layer(model: nn.Module, layer: str | None = None) -> tuple[str, EnergyMask2d]:
    """The ERSM layer of ``model`` (``layer`` names one when there are several)."""
    layers = energy_mask_layers(model)
    if not layers:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"model has no EnergyMask2d layer; its layers are {names}")
    if layer is None:
        if len(layers) > 1:
            raise ValueError(f"model has several EnergyMask2d layers, name one: {list(layers)}")
        return next(iter(layers.items()))
    if layer not in layers:
        raise ValueError(
            f"layer must be one of the EnergyMask2d layers {list(layers)}, but got {layer!r}"
        )
    return layer, layers[layer]


def step_grid(steps, num_tokens: int) -> list[int]:
    """Steps (number of tokens) in [0, N], sorted: None -> all, int -> that many evenly spaced."""
    if steps is None:
        return list(range(num_tokens + 1))
    if isinstance(steps, int):
        if steps < 2:
            raise ValueError(f"steps as an int must be >= 2, but got {steps}")
        grid = torch.linspace(0, num_tokens, steps).round().long().unique().tolist()
        return [int(s) for s in grid]
    grid = sorted({int(s) for s in steps})
    if not grid or any(s < 0 or s > num_tokens for s in grid):
        raise ValueError(f"steps must lie in [0, N] = [0, {num_tokens}], but got {list(steps)}")
    return grid


def forced_masks(scores: Tensor, steps: Sequence[int], mode: str) -> Tensor:
    """Binary masks (S, B, h, w) for scores (B, h, w): deletion drops the k lowest
    scores, insertion keeps only the k highest (stable order, ties by position)."""
    b, h, w = scores.shape
    n = h * w
    order = torch.argsort(scores.reshape(b, n), dim=1, stable=True)  # least important first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n).expand(b, n).contiguous())
    k = torch.as_tensor(list(steps)).view(-1, 1, 1)
    keep = rank.unsqueeze(0) >= k if mode == "deletion" else rank.unsqueeze(0) >= n - k
    return keep.float().view(len(steps), b, h, w)


class _Naive:
    """The full model for every step: the reference the fast path must match."""

    method = "naive"

    def __init__(self, model: nn.Module, layer: EnergyMask2d) -> None:
        self.model, self.layer = model, layer

    def start(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Clean forward of a batch: the layer's input and its energy logits."""
        captured: list[Tensor] = []
        handle = self.layer.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        self.x, self.features = x, captured[0]
        return self.features, self.layer.last_logits

    def suffix(self, f: Tensor) -> Tensor:
        """Logits with the layer's input replaced by f (same batch size as x)."""
        handle = self.layer.register_forward_pre_hook(lambda _m, _a: (f,))
        try:
            return self.model(self.x)
        finally:
            handle.remove()

    def grad_forward(self) -> tuple:
        """(function, its input) through which Grad-CAM reaches the layer."""
        return self.model, self.x

    def logits(self, masks: Tensor, soft: bool, _per_forward: int) -> Tensor:
        """Logits (S·B, classes) for masks (S, B, h, w), one full forward per step."""
        out = []
        for m in masks:
            with forcing(self.layer, m, soft=soft):
                out.append(self.model(self.x))
        return torch.cat(out)


class _Fast(_Naive):
    """The model cut at the layer: prefix once per batch, stacked masks through the suffix."""

    method = "fast"

    def __init__(self, split: Split, layer: EnergyMask2d) -> None:
        self.split, self.layer = split, layer

    def start(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.cut = self.split.prefix(x)
        self.features = self.split.features(self.cut)
        self.layer(self.features)  # the clean energy logits (cheap: one layer)
        return self.features, self.layer.last_logits

    def suffix(self, f: Tensor) -> Tensor:
        return self.split.suffix(self.cut, f)

    def grad_forward(self) -> tuple:
        # as in the full model, the gradient w.r.t. the layer's input follows every path
        # (a skip path read before the layer too: so the input needs grad from the start)
        features = self.features.detach().requires_grad_()
        return (lambda f: self.split.suffix(self.cut, f, through_input=True)), features

    def logits(self, masks: Tensor, soft: bool, per_forward: int) -> Tensor:
        s, b = masks.shape[:2]
        out = []
        for j in range(0, s, per_forward):
            chunk = masks[j : j + per_forward]
            with forcing(self.layer, chunk.reshape(-1, *chunk.shape[2:]), soft=soft):
                out.append(self.split.suffix(self.cut, repeat=chunk.shape[0]))
        return torch.cat(out)


class _Sparse(_Naive):
    """Scores from the model; each deletion step through its sparse copy (docs/design.md §11)."""

    method = "sparse"

    def __init__(self, model: nn.Module, layer: EnergyMask2d, name: str) -> None:
        super().__init__(model, layer)
        self.sparse_model, self.sparse_layer = sparse_copy(model, name)

    def logits(self, masks: Tensor, soft: bool, _per_forward: int) -> Tensor:
        out = []
        for m in masks:
            with forcing(self.sparse_layer, m, soft=soft):
                out.append(self.sparse_model(self.x))
        return torch.cat(out)


def _runner(model: nn.Module, name: str, layer: EnergyMask2d, x: Tensor, method: str) -> _Naive:
    if method == "naive":
        return _Naive(model, layer)
    try:
        # the split is planned and checked on up to 3 images: exact on any batch size,
        # and a batch of 3 makes a coincidental "batch-sized" dimension unlikely
        return _Fast(split_at(model, layer, x[:3]), layer)
    except CannotSplit as why:
        warnings.warn(f"cannot split the model at {name!r}: {why}; using the naive path",
                      stacklevel=3)
        return _Naive(model, layer)


def _check_args(method, mode, protocol, steps_per_forward, perturbations_per_eval) -> None:
    for arg, value, allowed in (("method", method, METHODS), ("mode", mode, MODES),
                                ("protocol", protocol, DELETION_PROTOCOLS)):
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {list(allowed)}, but got {value!r}")
    for arg, value in (("steps_per_forward", steps_per_forward),
                       ("perturbations_per_eval", perturbations_per_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, but got {value!r}")


class DeletionTest:
    """One batch at a time: the deletion test's step, shared by :func:`deletion_curve` and
    the Lightning callback (:mod:`energymask.lightning_modules.robustness_callback`).

    :meth:`hits` gives per-image hits, :meth:`result` the curves from their counts;
    the arguments are those of :func:`deletion_curve`. Run :meth:`hits` inside
    :meth:`context` (eval mode, no grad, the layer's own mask).
    """

    def __init__(self, model: nn.Module, layer: str | None = None, orderings=ORDERINGS,
                 steps: int | Sequence[int] | None = None, method: str = "fast",
                 steps_per_forward: int = 16, mode: str = "deletion",
                 perturbations_per_eval: int = 1, protocol: str = "binary",
                 sparse: bool = False) -> None:
        _check_args(method, mode, protocol, steps_per_forward, perturbations_per_eval)
        if sparse and protocol != "binary":
            raise ValueError(f"sparse=True needs protocol='binary' (a hard mask), "
                             f"but got {protocol!r}")
        self.sparse = sparse
        self.named = check_orderings(orderings)
        self.name, self.ersm = find_ersm_layer(model, layer)
        self.model, self.steps, self.method, self.mode = model, steps, method, mode
        self.steps_per_forward, self.protocol = steps_per_forward, protocol
        self.perturbations_per_eval = perturbations_per_eval
        self.runner: _Naive | None = None
        self.grid: list[int] = []
        self.num_tokens = 0

    def context(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(eval_mode(self.model))
        stack.enter_context(torch.no_grad())
        stack.enter_context(forcing(self.ersm, None))
        return stack

    def hits(self, x: Tensor, y: Tensor, seed: int | Tensor, bar=None) -> dict[str, Tensor]:
        """Per ordering, whether each image (B ≥ 1) is classified right at each step: (S, B)
        bool on the CPU. ``seed``: the random ordering's, an int (the batch) or (B,) per image."""
        x = to_model_device(self.model, x)
        if self.runner is None:
            if self.sparse:
                self.runner = _Sparse(self.model, self.ersm, self.name)
            else:
                self.runner = _runner(self.model, self.name, self.ersm, x, self.method)
        runner, p = self.runner, self.ersm.token_size
        features, logits = runner.start(x)
        if not self.grid:
            self.num_tokens = logits.shape[1] * logits.shape[2]
            self.grid = step_grid(self.steps, self.num_tokens)
        grid = self.grid
        y_dev = y.to(logits.device)
        forward, inputs = runner.grad_forward()
        ablation_batch = self.perturbations_per_eval if runner.method == "fast" else 1
        hits = {}
        for oname, ordering in self.named.items():
            scores = compute_scores(
                ordering, features=features, logits=logits, token_size=p, seed=seed,
                layer=self.ersm, y=y_dev, forward=forward, inputs=inputs, suffix=runner.suffix,
                perturbations_per_eval=ablation_batch,
            )  # fmt: skip
            masks = forced_masks(scores, grid, self.mode).to(features.device, features.dtype)
            out = runner.logits(masks, self.protocol == "soft", self.steps_per_forward)
            pred = out.argmax(-1).view(len(grid), -1)
            hits[oname] = (pred == y_dev.view(1, -1)).cpu()
            if bar is not None:
                bar.update()
        return hits

    def result(self, correct: dict[str, Tensor], total: int, seed: int) -> DeletionResult:
        """:class:`DeletionResult` from the number of images right at each step (S,) per
        ordering, over ``total`` images."""
        fractions = [k / self.num_tokens for k in self.grid]
        curves = {k: (v.double() / total).tolist() for k, v in correct.items()}
        settings = dict(
            layer=self.name, method=self.runner.method, steps_per_forward=self.steps_per_forward,
            seed=seed, token_size=self.ersm.token_size, orderings=list(self.named),
            protocol=self.protocol,
        )  # fmt: skip
        return DeletionResult(
            mode=self.mode,
            steps=self.grid,
            fractions=fractions,
            curves=curves,
            auc={k: auc(fractions, v) for k, v in curves.items()},
            num_tokens=self.num_tokens,
            num_samples=total,
            settings=settings,
            protocol=self.protocol,
        )


def deletion_curve(
    model: nn.Module,
    dataloader: Iterable,
    layer: str | None = None,
    orderings=ORDERINGS,
    steps: int | Sequence[int] | None = None,
    method: str = "fast",
    steps_per_forward: int = 16,
    seed: int = 0,
    progress: bool | None = None,
    mode: str = "deletion",
    perturbations_per_eval: int = 1,
    protocol: str = "binary",
    sparse: bool = False,
) -> DeletionResult:
    """Accuracy after deleting (or inserting) k tokens at an ERSM layer, per ordering.

    Args:
        model: classifier containing an :class:`EnergyMask2d`; evaluated in eval mode.
        dataloader: yields (x, y) or (x, y, ...) batches; empty batches are skipped.
        layer: qualified name of the ERSM layer when there are several. Default: the only one.
        orderings: names from :data:`energymask.constants.ORDERINGS`, callables
            ``(features, logits) -> scores (B, h, w)``, tensors, or a dict name -> ordering.
        steps: None (every k in 0..N), an int (that many evenly spaced k) or a sequence of k.
        method: ``"fast"`` (cut at the layer, steps batched) or ``"naive"`` (full forward
            per step). Default: ``"fast"``.
        steps_per_forward: how many steps share one suffix forward (fast path). Default: 16.
        seed: seed of the random ordering (batch i uses seed + i).
        progress: progress bar, see :func:`energymask.evaluation.progress_bar`.
            Default: None (on a terminal, for runs over 2 s).
        mode: ``"deletion"`` (least important deleted first) or ``"insertion"``
            (start all deleted, most important inserted first).
        perturbations_per_eval: Captum FeatureAblation batching knob (1 on the naive path).
        protocol: ``"binary"`` (forced binary mask, the authors') or ``"soft"`` (the
            model's soft keep map, deleted tokens set to 0). Default: ``"binary"``.
        sparse: run each step through the model's sparse masked-residual copy
            (:func:`energymask.sparse.sparse_copy`, docs/design.md §11): the residual
            blocks after the layer compute only at kept tokens, so a step with fewer
            tokens costs less; a different model from the dense one (the blocks pass
            deleted tokens on unchanged). Orderings are scored on ``model``. Binary
            protocol only. Default: False.

    Returns:
        :class:`DeletionResult`.

    Raises:
        ValueError: bad arguments, or a dataloader that yields no sample.
    """
    test = DeletionTest(model, layer, orderings, steps, method, steps_per_forward, mode,
                        perturbations_per_eval, protocol, sparse=sparse)
    correct: dict[str, Tensor] = {}
    total = n_batches = 0
    length = loader_length(dataloader)
    bar = progress_bar(None if length is None else length * len(test.named), mode, progress)
    with test.context(), bar:
        for i, batch in enumerate(dataloader):
            n_batches += 1
            x, y, _ = split_batch(batch)
            if y.shape[0] == 0:
                bar.update(len(test.named))
                continue
            for oname, hits in test.hits(x, y, seed + i, bar).items():
                correct[oname] = correct.get(oname, 0) + hits.sum(1)
            total += y.shape[0]
    if n_batches == 0:
        raise ValueError("dataloader is empty: it yielded no batch")
    if total == 0:
        raise ValueError(f"dataloader yielded {n_batches} batches, all empty (0 samples): "
                         "no curve to compute")
    return test.result(correct, total, seed)


def insertion_curve(model: nn.Module, dataloader: Iterable, **kwargs) -> DeletionResult:
    """:func:`deletion_curve` with ``mode="insertion"``: start all deleted, insert the most
    important tokens first; ``steps`` count inserted tokens."""
    return deletion_curve(model, dataloader, mode="insertion", **kwargs)
