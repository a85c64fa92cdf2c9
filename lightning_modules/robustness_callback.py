"""RobustnessTests: the deletion test, structured occlusion and mask quality inside
``trainer.test`` / ``trainer.validate``, on any strategy and number of devices
(docs/design.md §6, "On the Trainer").

ERSM: Energy-Regularized Spatial Masking (Devynck et al., IJCAI 2026, arXiv 2604.06893).

``Trainer(callbacks=[RobustnessTests()]).test(module, datamodule=dm)`` runs, on every
test batch each process receives, the per-batch steps of the plain functions
(:class:`~energymask.deletion.DeletionTest`, :func:`~energymask.occlusion.occlusion_hits`,
:func:`~energymask.evaluation.batch_scores`: one implementation of each test) and
keeps per-image hits. At the end of the epoch the counts are summed across
processes (integers: exact in any order) and the mask scores gathered and summed
with ``math.fsum`` (correctly rounded: the same in any order), so the results are
those of one process over the whole set, whatever the world size and the last
batch's size. Two things make that hold:

- DistributedSampler pads the shards to equal length with the first indices; the
  callback reads each sample's dataset index from the loader's sampler and counts a
  padded duplicate (global position >= len(dataset)) zero times.
- The random ordering and the random occlusions are seeded per image with
  ``seed + dataset index`` (the plain functions seed per batch: ``seed + batch
  index``), so an image's draws do not depend on which batch or process it is in.
  The random curves of the callback are therefore not those of the plain functions
  on the same seed (ours; every other curve and score is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler, IterableDataset
from typing_extensions import override

from energymask.deletion import DeletionResult, DeletionTest
from energymask.ersm import energy_mask_layers
from energymask.evaluation import DEFAULT_FRACTIONS, Evaluation, batch_scores, split_batch
from energymask.occlusion import (
    OcclusionResult,
    check_occlusion_args,
    occlusion_hits,
)

from ._compat import Callback

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["RobustnessResults", "RobustnessTests"]

DELETION_OPTIONS = ("orderings", "steps", "method", "steps_per_forward", "mode",
                    "perturbations_per_eval", "protocol")
OCCLUSION_OPTIONS = ("fractions", "patch_size", "placement", "fill")
STAGES = ("test", "validate")
#: strategies whose processes do not hold the whole model (refused, by class name)
SHARDING = ("FSDP", "DeepSpeed", "ModelParallel")


@dataclass
class RobustnessResults:
    """What one ``trainer.test`` / ``trainer.validate`` found, over the whole set.

    ``evaluation``: accuracy and mask scores (:class:`~energymask.evaluation.Evaluation`);
    ``deletion[layer]``; ``occlusion[placement]``. :meth:`to_dict` is the layout of the
    command line's ``evaluation.json``.
    """

    evaluation: Evaluation
    deletion: dict[str, DeletionResult] = field(default_factory=dict)
    occlusion: dict[str, OcclusionResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.evaluation.accuracy, "num_samples": self.evaluation.num_samples,
                "mask_quality": self.evaluation.masks,
                "deletion": {k: v.to_dict() for k, v in self.deletion.items()},
                "occlusion": {k: v.to_dict() for k, v in self.occlusion.items()}}


def _options(value: bool | dict | None, allowed: tuple[str, ...], arg: str) -> dict | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{arg} must be True, False or a dict of options, but got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise TypeError(f"{arg} options must be among {list(allowed)}, but got {unknown}")
    return dict(value)


def shard_indices(loader: Any, world_size: int) -> tuple[Tensor | None, Tensor | None]:
    """Dataset indices (n,) of the samples ``loader`` yields in this process, in order, and
    whether each counts (n,) bool: False for DistributedSampler's padded duplicates.

    ``(None, None)`` for an iterable dataset in one process (positions are the indices).

    Raises:
        ValueError: an iterable dataset, or a sampler that drops samples, on several processes.
    """
    if isinstance(getattr(loader, "dataset", None), IterableDataset) or not hasattr(
        loader, "sampler"
    ):
        if world_size > 1:
            raise ValueError(f"RobustnessTests on {world_size} processes needs a map-style "
                             "dataset (a sampler to read the dataset indices from), but got an "
                             "iterable dataset")
        return None, None
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None) or loader.sampler
    indices = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
    valid = torch.ones(len(indices), dtype=torch.bool)
    if isinstance(sampler, DistributedSampler):
        if sampler.drop_last:
            raise ValueError("RobustnessTests needs every sample: the DistributedSampler "
                             "has drop_last=True; use drop_last=False")
        position = sampler.rank + sampler.num_replicas * torch.arange(len(indices))
        valid = position < len(sampler.dataset)
    return indices, valid


def _gather_rows(strategy: Any, rows: Tensor, device: torch.device) -> Tensor:
    """``rows`` (n, ...) of every process concatenated (n may differ between processes)."""
    if strategy.world_size == 1:
        return rows
    n = torch.tensor([rows.shape[0]], device=device)
    sizes = strategy.all_gather(n).view(-1).tolist()
    padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows.to(device)
    gathered = strategy.all_gather(padded).cpu()
    return torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)])


class RobustnessTests(Callback):
    """The deletion test, structured occlusion and mask quality in ``trainer.test`` /
    ``trainer.validate``, on the module's own test / validation data.

    Args:
        deletion: options of :func:`~energymask.deletion.deletion_curve` (``orderings``,
            ``steps``, ``method``, ``steps_per_forward``, ``mode``,
            ``perturbations_per_eval``, ``protocol``); True: its defaults; False: no
            deletion test. Default: True.
        occlusion: options of :func:`~energymask.occlusion.occlusion_robustness`
            (``fractions``, ``patch_size``, ``fill``, and ``placement`` as one name or a
            list of names); True: its defaults; False: none. Default: True.
        mask_quality: the mask scores of every ERSM layer. Accuracy is always measured.
            Default: True.
        layers: the ERSM layers the deletion test runs at. Default: all of them.
        model: the attribute of the LightningModule that holds the network (e.g.
            ``"model"``); layer names are relative to it. Default: None (the module).
        seed: random ordering and occlusions: image i uses ``seed + i`` (dataset index).
        stages: ``"test"`` and / or ``"validate"`` (never the validation inside ``fit``).
            Default: both.
        log: log the AUCs, occlusion accuracies and mask scores with ``pl_module.log``.

    After the epoch, :attr:`results` holds a :class:`RobustnessResults` (on every process).
    Only the first dataloader of the stage is evaluated.
    """

    def __init__(self, deletion: bool | dict = True, occlusion: bool | dict = True,
                 mask_quality: bool = True, layers: list[str] | None = None,
                 model: str | None = None, seed: int = 0,
                 stages: tuple[str, ...] = STAGES, log: bool = True) -> None:
        super().__init__()
        self.deletion = _options(deletion, DELETION_OPTIONS, "deletion")
        occ = _options(occlusion, OCCLUSION_OPTIONS, "occlusion")
        self.placements: list[str] = []
        if occ is not None:
            placement = occ.pop("placement", "random")
            self.placements = [placement] if isinstance(placement, str) else list(placement)
            if not self.placements:
                raise ValueError("occlusion placement must name at least one placement, "
                                 "but got none")
            occ = {"fractions": DEFAULT_FRACTIONS, "patch_size": 8, "fill": "zero", **occ}
            for p in self.placements:
                _, occ["fractions"] = check_occlusion_args(
                    {"model": torch.nn.Identity()}, occ["fractions"], occ["patch_size"], p,
                    occ["fill"])
        self.occlusion = occ
        self.mask_quality = bool(mask_quality)
        self.layers = None if layers is None else list(layers)
        self.model_attr = model
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, but got {seed!r}")
        self.seed = seed
        bad = [s for s in stages if s not in STAGES]
        if isinstance(stages, str) or bad or not stages:
            raise ValueError(f"stages must hold some of {list(STAGES)}, but got {stages!r}")
        self.stages = tuple(stages)
        self.log = log
        self.results: RobustnessResults | None = None
        self._active = False

    # -- the epoch ---------------------------------------------------------------------------

    def _network(self, pl_module: Any) -> torch.nn.Module:
        if self.model_attr is None:
            return pl_module
        net = getattr(pl_module, self.model_attr, None)
        if not isinstance(net, torch.nn.Module):
            raise ValueError(f"model must name a module attribute of the LightningModule, but "
                             f"{type(pl_module).__name__}.{self.model_attr} is "
                             f"{type(net).__name__}")
        return net

    def _start(self, trainer: Any, pl_module: Any, stage: str) -> None:
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        self._active = fn == stage and stage in self.stages and not trainer.sanity_checking
        if not self._active:
            return
        strategy = type(trainer.strategy).__name__
        if any(k in strategy for k in SHARDING):
            raise ValueError(f"RobustnessTests runs the full model in every process, but the "
                             f"strategy {strategy} shards it; use ddp, ddp_spawn or one device")
        loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self._indices, self._valid = shard_indices(loader, trainer.world_size)
        self._position = 0
        self._net = self._network(pl_module)
        self._masks = energy_mask_layers(self._net) if self.mask_quality else {}
        self._deletion: dict[str, DeletionTest] = {}
        if self.deletion is not None:
            names = self.layers if self.layers is not None else list(energy_mask_layers(self._net))
            self._deletion = {n: DeletionTest(self._net, n, **self.deletion) for n in names}
        self._correct = torch.zeros((), dtype=torch.long)
        self._total = torch.zeros((), dtype=torch.long)
        self._deleted: dict[str, dict[str, Tensor]] = {n: {} for n in self._deletion}
        self._occluded: dict[str, Tensor] = {}
        self._scores: dict[str, dict[str, list[Tensor]]] = {n: {} for n in self._masks}

    def _batch(self, batch: Any, dataloader_idx: int) -> None:
        if not self._active or dataloader_idx != 0:
            return
        x, y, extra = split_batch(batch)
        b, start = y.shape[0], self._position
        self._position += b
        if b == 0:
            return
        if self._indices is None:
            index, valid = torch.arange(start, start + b), torch.ones(b, dtype=torch.bool)
        else:
            index, valid = self._indices[start : start + b], self._valid[start : start + b]
        if len(index) != b:
            raise ValueError(f"the loader yielded more samples than its sampler holds "
                             f"({len(self._indices)}): a batch sampler that does not follow "
                             "the sampler is not supported")
        seeds = self.seed + index
        # Lightning evaluates in inference mode; Grad-CAM needs autograd: normal tensors
        with torch.inference_mode(False):
            x, y = x.clone(), y.clone()
            extra = extra.clone() if isinstance(extra, Tensor) else extra
            for name, test in self._deletion.items():
                with test.context():
                    hits = test.hits(x, y, seeds)
                for o, h in hits.items():
                    counts = self._deleted[name]
                    counts[o] = counts.get(o, 0) + (h & valid).sum(1)
            with torch.no_grad():
                for p in self.placements:
                    hits = occlusion_hits({"model": self._net}, x, y, extra, seed=seeds,
                                          placement=p, **self.occlusion)["model"]
                    self._occluded[p] = self._occluded.get(p, 0) + (hits & valid).sum(1)
                right, scores = batch_scores(self._net, self._masks, x, y, extra)
        self._correct += (right.cpu() & valid).sum()
        self._total += valid.sum()
        for name, per_metric in scores.items():
            for metric, values in per_metric.items():
                per_metric_list = self._scores[name].setdefault(metric, [])
                per_metric_list.append(values.detach().double().cpu()[valid])

    def _finish(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        self._active = False
        strategy, device = trainer.strategy, pl_module.device
        # every count in one vector, summed over the processes (integers: exact)
        keys: list[tuple[str, str, str]] = [("total", "", ""), ("correct", "", "")]
        parts = [self._total.view(1), self._correct.view(1)]
        for name, test in self._deletion.items():
            for o in test.named:
                keys.append(("deletion", name, o))
                parts.append(self._deleted[name][o])
        for p in self.placements:
            keys.append(("occlusion", p, ""))
            parts.append(self._occluded[p])
        sizes = [t.numel() for t in parts]
        summed = strategy.reduce(torch.cat(parts).to(device), reduce_op="sum").cpu()
        counts = dict(zip(keys, torch.split(summed, sizes), strict=True))
        total = int(counts["total", "", ""])
        if total == 0:
            raise ValueError("RobustnessTests saw no sample: the loader yielded no batch, or "
                             "only empty ones")
        self.results = RobustnessResults(
            evaluation=Evaluation(accuracy=int(counts["correct", "", ""]) / total,
                                  num_samples=total, masks=self._mask_means(strategy, device)),
            deletion={name: test.result({o: counts["deletion", name, o] for o in test.named},
                                        total, self.seed)
                      for name, test in self._deletion.items()},
            occlusion={p: OcclusionResult(
                fractions=self.occlusion["fractions"],
                accuracy={"model": (counts["occlusion", p, ""].double() / total).tolist()},
                num_samples=total,
                settings=dict(patch_size=self.occlusion["patch_size"], placement=p,
                              fill=self.occlusion["fill"], seed=self.seed))
                for p in self.placements},
        )  # fmt: skip
        if self.log:
            # equal on every process already: "max" keeps the value exactly (a mean may not)
            pl_module.log_dict(self._metrics(), sync_dist=True, reduce_fx="max")

    def _mask_means(self, strategy: Any, device: torch.device) -> dict[str, dict[str, float]]:
        """Per layer and metric, the mean over the images of every process (NaN left out),
        summed with ``math.fsum``: correctly rounded, so the order of the images is moot."""
        columns = [(n, m) for n, per in self._scores.items() for m in per]
        if not columns:
            return {name: {} for name in self._masks}
        local = torch.stack([torch.cat(self._scores[n][m]) for n, m in columns], dim=1)
        rows = _gather_rows(strategy, local, device)
        means: dict[str, dict[str, float]] = {name: {} for name in self._masks}
        for (name, metric), values in zip(columns, rows.T, strict=True):
            finite = values[~torch.isnan(values)].tolist()
            means[name][metric] = math.fsum(finite) / len(finite) if finite else math.nan
        return means

    def _metrics(self) -> dict[str, float]:
        r = self.results
        metrics = {"robustness/accuracy": r.evaluation.accuracy}
        for name, d in r.deletion.items():
            metrics.update({f"robustness/{d.mode}/{name}/auc_{o}": v for o, v in d.auc.items()})
        for p, o in r.occlusion.items():
            metrics.update({f"robustness/occlusion/{p}/acc@{f:g}": a
                            for f, a in zip(o.fractions, o.accuracy["model"], strict=True)})
        for name, scores in r.evaluation.masks.items():
            metrics.update({f"robustness/mask/{name}/{k}": v for k, v in scores.items()})
        return metrics

    # -- hooks -------------------------------------------------------------------------------

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer,
                                  pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "validate")

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._batch(batch, dataloader_idx)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._batch(batch, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer,
                                pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)
