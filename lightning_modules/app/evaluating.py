"""The one evaluation of a trained model under an :class:`~.protocol.EvaluationProtocol`.

:func:`evaluate_run` is what ``energymask evaluate`` writes into
``evaluation.json``; the demo and the recipes (and so ``benchmarks/results_*.py``)
call its parts, :func:`deletion_results` and :func:`occlusion_results`, with the
same protocol object, so the numbers of every entry point are measured alike.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from energymask.deletion import deletion_curve
from energymask.ersm import energy_mask_layers
from energymask.evaluation import evaluate
from energymask.occlusion import occlusion_robustness
from energymask.pbedropout import PBEDropout2d

from .protocol import EvaluationProtocol


def ordered_loader(test_set: Dataset, protocol: EvaluationProtocol,
                num_samples: int | None = None) -> DataLoader:
    """The first ``num_samples`` of ``test_set`` (all: None), in order, in protocol batches."""
    if num_samples is not None and num_samples < len(test_set):
        test_set = Subset(test_set, range(num_samples))
    return DataLoader(test_set, batch_size=protocol.batch_size,
                      num_workers=protocol.num_workers)


def deletion_results(net: nn.Module, test_set: Dataset, protocol: EvaluationProtocol,
                     progress: bool = False) -> dict[str, dict[str, Any]]:
    """The deletion test at every ERSM layer of ``net``: ``{layer: DeletionResult.to_dict()}``."""
    loader = ordered_loader(test_set, protocol, protocol.deletion_samples)
    return {
        name: deletion_curve(net, loader, layer=name, orderings=list(protocol.orderings),
                             steps=protocol.steps, seed=protocol.seed, progress=progress,
                             protocol=protocol.deletion_protocol,
                             perturbations_per_eval=protocol.perturbations_per_eval,
                             sparse=protocol.sparse).to_dict()
        for name in energy_mask_layers(net)
    }  # fmt: skip


def occlusion_results(models: nn.Module | dict[str, nn.Module], test_set: Dataset,
                      protocol: EvaluationProtocol, with_masks: bool,
                      progress: bool = False) -> dict[str, dict[str, Any]]:
    """Accuracy under occlusion per placement: ``{placement: OcclusionResult.to_dict()}``.

    ``object`` runs only when the data has object masks (``with_masks``).
    """
    loader = ordered_loader(test_set, protocol)
    placements = [p for p in protocol.placements if p != "object" or with_masks]
    return {
        p: occlusion_robustness(models, loader, list(protocol.fractions), protocol.patch_size,
                                placement=p, seed=protocol.seed, progress=progress).to_dict()
        for p in placements
    }  # fmt: skip


def deterministic_drop_rate(layer: PBEDropout2d) -> float:
    """Share of patches the layer's deterministic (inference) masks drop: p, rounded per channel."""
    return float(1 - layer.deterministic_mask().mean())


def evaluate_run(net: nn.Module, test_set: Dataset, protocol: EvaluationProtocol,
                 with_masks: bool, progress: bool = False) -> dict[str, Any]:
    """Accuracy, mask quality, deletion, occlusion and PB-EDropout drop rates of ``net``.

    Returns ``evaluation.json``'s content (without ``"run"``): ``protocol``,
    ``accuracy``, ``num_samples``, ``mask_quality``, ``deletion``, ``occlusion``,
    ``pbedropout``.
    """
    scores = evaluate(net, ordered_loader(test_set, protocol), progress=progress)
    return {
        "protocol": protocol.to_dict(),
        "accuracy": scores.accuracy,
        "num_samples": scores.num_samples,
        "mask_quality": scores.masks,
        "deletion": deletion_results(net, test_set, protocol, progress),
        "occlusion": occlusion_results(net, test_set, protocol, with_masks, progress),
        "pbedropout": {
            name: {"deterministic_drop_rate": deterministic_drop_rate(layer)}
            for name, layer in net.named_modules()
            if isinstance(layer, PBEDropout2d) and layer.ema_mask.numel()
        },
    }


__all__ = ["deletion_results", "deterministic_drop_rate", "evaluate_run", "occlusion_results",
           "ordered_loader"]
