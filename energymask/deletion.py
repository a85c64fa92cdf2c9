"""Deletion and insertion curves at an ERSM layer (DESIGN.md §6).

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

Tokens of the ERSM layer are deleted (forced binary mask, 1 keep, 0 delete) in
the order given by an ordering (see :mod:`energymask.orderings`) and accuracy
is recorded after k deletions, for k over a step grid. AUC is the trapezoid
rule over the deleted fraction k / N, which lies in [0, 1] already.

Fast path (``method="fast"``): the features entering the ERSM layer do not
depend on the mask, so one clean forward per batch captures them (forward
pre-hook); then only the **suffix** of the network (ERSM layer and everything
after it) is re-run, ``steps_per_forward`` steps stacked along the batch. The
suffix is built by walking from the model down to the layer through
containers whose forward is a known chain: ``nn.Sequential``,
``InsertedAfter``, ``Classifier``, ``FrozenBackboneClassifier``. Any other
container on the path (custom forward, skip connections around the layer)
cannot be split exactly; then the naive path is used with a warning.
``method="naive"`` runs the full model once per step and ordering.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from energymask.ersm import EnergyMask2d, energy_mask_layers
from energymask.kernels import expand_tokens
from energymask.models import Classifier, FrozenBackboneClassifier
from energymask.orderings import check_orderings, compute_scores
from energymask.surgery import InsertedAfter

__all__ = ["DeletionResult", "deletion_curve", "insertion_curve", "find_ersm_layer", "auc"]


@dataclass
class DeletionResult:
    """Curves (accuracy per step) and AUC per ordering.

    ``steps``: tokens deleted (deletion) or inserted (insertion); ``fractions``:
    steps / N; ``curves[name][i]``: accuracy at ``steps[i]``; ``auc[name]``.
    """

    mode: str
    steps: list[int]
    fractions: list[float]
    curves: dict[str, list[float]]
    auc: dict[str, float]
    num_tokens: int
    num_samples: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid rule of ``values`` over ``fractions`` (deleted fraction in [0, 1])."""
    f = torch.as_tensor(list(fractions), dtype=torch.float64)
    v = torch.as_tensor(list(values), dtype=torch.float64)
    if f.numel() < 2:
        return float(v.sum()) if f.numel() else 0.0
    return float(torch.trapezoid(v, f))


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


def _suffix_fn(module: nn.Module, path: list[str], target: nn.Module) -> Callable | None:
    """g -> output of ``module`` given that ``target`` (at ``path``) outputs g, or None."""
    if not path:
        return (lambda g: g) if module is target else None
    head, rest = path[0], path[1:]
    child = getattr(module, head)
    inner = _suffix_fn(child, rest, target)
    if inner is None:
        return None
    if isinstance(module, nn.Sequential):
        after = list(module.children())[list(dict(module.named_children())).index(head) + 1 :]

        def seq(f: Tensor) -> Tensor:
            y = inner(f)
            for m in after:
                y = m(y)
            return y

        return seq
    if isinstance(module, InsertedAfter):
        if head == "layer":
            return inner
        return lambda f: module.layer(inner(f))
    if isinstance(module, FrozenBackboneClassifier):
        if head == "ersm":
            return lambda f: module.head(module.pool(inner(f)).flatten(1))
        if head == "backbone":
            return lambda f: module.head(module.pool(module.ersm(inner(f))).flatten(1))
        return None
    if isinstance(module, Classifier):
        if head == "backbone":
            return lambda f: module.head(module.pool(inner(f)).flatten(1))
        return None
    return None


def split_after(model: nn.Module, name: str, layer: nn.Module) -> Callable | None:
    """The network after ``layer`` as a function of the layer's output, or None."""
    return _suffix_fn(model, name.split("."), layer)


def split_suffix(model: nn.Module, name: str, layer: nn.Module) -> Callable | None:
    """The network from ``layer`` on (layer included) as a function of its input, or None."""
    after = split_after(model, name, layer)
    return None if after is None else (lambda f: after(layer(f)))


def _hook_suffix(model: nn.Module, layer: nn.Module, x: Tensor) -> Callable:
    """Generic suffix for batch size B: full forward of x with the layer's input replaced."""

    def run(f: Tensor) -> Tensor:
        handle = layer.register_forward_pre_hook(lambda _m, _a: (f,))
        try:
            return model(x)
        finally:
            handle.remove()

    return run


def step_grid(steps, num_tokens: int) -> list[int]:
    """Steps (number of tokens) in [0, N]: None -> all, int -> that many evenly spaced."""
    if steps is None:
        return list(range(num_tokens + 1))
    if isinstance(steps, int):
        if steps < 2:
            raise ValueError(f"steps as an int must be >= 2, but got {steps}")
        grid = torch.linspace(0, num_tokens, steps).round().long().unique().tolist()
        return [int(s) for s in grid]
    grid = [int(s) for s in steps]
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


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside, the previous mode restored after (warns when it was training)."""
    was_training = model.training
    if was_training:
        warnings.warn("model was in train mode; evaluating in eval mode", stacklevel=3)
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batches(dataloader: Iterable, progress: bool, desc: str):
    if progress:
        from tqdm.auto import tqdm

        total = len(dataloader) if hasattr(dataloader, "__len__") else None
        return tqdm(dataloader, total=total, desc=desc)
    return dataloader


def split_batch(batch) -> tuple[Tensor, Tensor]:
    """(x, y) from a batch (x, y, ...); raises when labels are missing."""
    if isinstance(batch, Tensor) or not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("the dataloader must yield (x, y, ...) batches with labels, but got no y")
    return batch[0], batch[1]


def _correct(logits: Tensor, y: Tensor, steps: int) -> Tensor:
    pred = logits.argmax(-1).view(steps, -1)
    return (pred == y.view(1, -1)).sum(1).cpu()


def deletion_curve(
    model: nn.Module,
    dataloader: Iterable,
    layer: str | None = None,
    orderings=("energy", "magnitude", "random", "gradcam", "feature_ablation"),
    steps: int | Sequence[int] | None = None,
    method: str = "fast",
    steps_per_forward: int = 16,
    seed: int = 0,
    progress: bool = False,
    mode: str = "deletion",
    perturbations_per_eval: int = 1,
) -> DeletionResult:
    """Accuracy after deleting (or inserting) k tokens at an ERSM layer, per ordering.

    Args:
        model: classifier containing an :class:`EnergyMask2d`.
        dataloader: yields (x, y) or (x, y, ...) batches.
        layer: qualified name of the ERSM layer when there are several. Default: the only one.
        orderings: names from :data:`energymask.orderings.ORDERINGS`, callables
            ``(features, logits) -> scores (B, h, w)``, tensors, or a dict name -> ordering.
        steps: None (every k in 0..N), an int (that many evenly spaced k) or a sequence of k.
        method: ``"fast"`` (suffix only, steps batched) or ``"naive"`` (full forward per step).
        steps_per_forward: how many steps share one suffix forward (fast path). Default: 16.
        seed: seed of the random ordering (batch i uses seed + i).
        progress: tqdm bar over batches. Default: False.
        mode: ``"deletion"`` (least important deleted first) or ``"insertion"``
            (start all deleted, most important inserted first).
        perturbations_per_eval: Captum FeatureAblation batching knob (1 when the
            model cannot be split).

    Returns:
        :class:`DeletionResult`.
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', but got {method!r}")
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', but got {mode!r}")
    if not isinstance(steps_per_forward, int) or steps_per_forward < 1:
        raise ValueError(f"steps_per_forward must be a positive int, but got {steps_per_forward!r}")
    named = check_orderings(orderings)
    name, ersm = find_ersm_layer(model, layer)
    after = split_after(model, name, ersm)
    suffix = None if after is None else (lambda f: after(ersm(f)))
    if method == "fast" and after is None:
        warnings.warn(
            f"cannot split the model at {name!r} (only nn.Sequential, InsertedAfter, Classifier "
            "and FrozenBackboneClassifier chains are split); using the naive path",
            stacklevel=2,
        )
        method = "naive"
    p = ersm.token_size
    correct: dict[str, Tensor] | None = None
    grid: list[int] = []
    total, n_tokens = 0, 0
    with eval_mode(model), torch.no_grad():
        try:
            for i, batch in enumerate(_batches(dataloader, progress, mode)):
                x, y = split_batch(batch)
                captured: list[Tensor] = []
                handle = ersm.register_forward_pre_hook(lambda _m, a, c=captured: c.append(a[0]))
                ersm.forced_mask = None
                try:
                    model(x)
                finally:
                    handle.remove()
                features, logits = captured[0], ersm.last_logits
                if correct is None:
                    n_tokens = logits.shape[1] * logits.shape[2]
                    grid = step_grid(steps, n_tokens)
                    correct = {k: torch.zeros(len(grid), dtype=torch.long) for k in named}
                run_suffix = suffix if suffix is not None else _hook_suffix(model, ersm, x)
                y_dev = y.to(logits.device)
                # the hook suffix replays x, so it takes exactly B feature maps at a time
                ppe = perturbations_per_eval if suffix is not None else 1
                for oname, ordering in named.items():
                    scores = compute_scores(
                        ordering, features=features, logits=logits, token_size=p,
                        seed=seed + i, model=model, layer=ersm, x=x, y=y_dev,
                        suffix=run_suffix, perturbations_per_eval=ppe,
                    )  # fmt: skip
                    masks = forced_masks(scores, grid, mode).to(features.device, features.dtype)
                    correct[oname] += _eval_masks(
                        model, ersm, x, y_dev, features, masks, after, method, steps_per_forward
                    )
                total += y.shape[0]
        finally:
            ersm.forced_mask = None
    if correct is None:
        raise ValueError("dataloader is empty: it yielded no batch")
    fractions = [k / n_tokens for k in grid]
    curves = {k: (v.double() / total).tolist() for k, v in correct.items()}
    settings = dict(
        layer=name, method=method, steps_per_forward=steps_per_forward, seed=seed,
        token_size=p, orderings=list(named),
    )  # fmt: skip
    return DeletionResult(
        mode=mode,
        steps=grid,
        fractions=fractions,
        curves=curves,
        auc={k: auc(fractions, v) for k, v in curves.items()},
        num_tokens=n_tokens,
        num_samples=total,
        settings=settings,
    )


def _eval_masks(
    model: nn.Module,
    ersm: EnergyMask2d,
    x: Tensor,
    y: Tensor,
    features: Tensor,
    masks: Tensor,
    after: Callable | None,
    method: str,
    steps_per_forward: int,
) -> Tensor:
    """Correct predictions per step for masks (S, B, h, w).

    Fast path: with a forced mask the ERSM output is exactly ``features ⊙ mask``
    (see :func:`energymask.ersm.energy_mask_2d`), so the masked features are
    formed directly and only the network after the layer runs.
    """
    s, b = masks.shape[:2]
    out = []
    if method == "naive":
        for j in range(s):
            ersm.forced_mask = masks[j]
            out.append(_correct(model(x), y, 1))
    else:
        for j in range(0, s, steps_per_forward):
            chunk = masks[j : j + steps_per_forward]
            c = chunk.shape[0]
            keep = expand_tokens(chunk.reshape(c * b, *chunk.shape[2:]), ersm.token_size)
            g = features.unsqueeze(0) * keep.view(c, b, 1, *keep.shape[2:]).to(features.dtype)
            out.append(_correct(after(g.reshape(c * b, *features.shape[1:])), y, c))
    ersm.forced_mask = None
    return torch.cat(out)


def insertion_curve(model: nn.Module, dataloader: Iterable, **kwargs) -> DeletionResult:
    """:func:`deletion_curve` with ``mode="insertion"``: start all deleted, insert the most
    important tokens first; ``steps`` count inserted tokens."""
    return deletion_curve(model, dataloader, mode="insertion", **kwargs)
