"""The demo's ``report.md``: every number, verdict and caption computed from ``metrics.json``.

:func:`render` turns the metrics dict that ``energymask demo`` writes into a
report that stands alone: what the run measured and on what, the definitions
of the metrics, each model's settings, the papers' claims with the verdict the
run's numbers give (and the rule that gives it), the tables, the figures with
captions, and the run's timings and machine. Nothing in the text is a result
written by hand: change the numbers and the verdicts follow.

A metric value is a float (one seed) or a list of floats (one per seed): then
the report gives mean ± std over seeds and, for a claim, on how many seeds the
difference had the claimed sign. Every verdict says how many seeds stand behind
it, and one from a single seed reads as such ("seed 0 only: held"): on one seed a
difference of a hundredth or two is within what another run of the same seed on
another machine gives (docs/design.md §6, "Figures and the report").
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import torch
from torch import nn

from energymask.ersm import energy_mask_layers
from energymask.evaluation import eval_mode
from energymask.mask_quality import SCORE_DEFINITIONS
from energymask.pbedropout import PBEDropout2d

from .runs import write_atomic

__all__ = ["CHANCE_MARGIN", "ERSM_MODELS", "METRIC_DEFINITIONS", "OURS", "TOLERANCE", "Verdict",
           "label", "machine", "model_settings", "render", "verdicts", "write_report"]

#: Differences smaller than this (accuracy or AUC) are called "level".
TOLERANCE = 0.01

#: A model within this of chance accuracy at every occluded fraction is "at chance";
#: when every model is, the occlusion comparison cannot separate them.
CHANCE_MARGIN = 0.05

#: Definitions printed in the report: the run's three measurements, then the mask scores'
#: (:data:`energymask.mask_quality.SCORE_DEFINITIONS`). A key the run reports but this
#: table lacks is listed as "see energymask.mask_quality".
METRIC_DEFINITIONS: dict[str, str] = {
    "test accuracy": "top-1 accuracy over the test images (share of images whose highest "
                     "logit is the true class); chance is 1 / classes",
    "deletion AUC": "the ERSM layer's tokens are deleted one ordering at a time (least "
                    "important first); accuracy is measured after deleting a fraction f of "
                    "them, for f from 0 to 1, and the AUC is the trapezoid area under "
                    "accuracy(f): 1 = no loss until everything is gone, higher is better",
    "occlusion accuracy": "top-1 accuracy on test images with a fraction f of the image "
                          "covered by zero-filled square patches, placed at random or on "
                          "the object",
    **SCORE_DEFINITIONS,
}

#: What each of the demo's models is.
MODELS = {
    "baseline": "small_cnn -> global average pooling -> linear head",
    "frozen_ersm": "the authors' protocol: ERSM between the baseline's frozen backbone and "
                   "its head (ERSM and head trained)",
    "ersm_inside": "small_cnn with ERSM after layer2 (ERSMCallback), trained from scratch",
    "ersm_inside_hard": "ours, not the authors': as ersm_inside with gate='hard' at T = 0.1, "
                        "the binary mask 1[keep >= 0.5] executed in training as in "
                        "inference (straight-through gradient)",
    "none": "shallow_cnn, no dropout (the regularisers' reference)",
    "dropout": "shallow_cnn with nn.Dropout after layer2",
    "dropout2d": "shallow_cnn with nn.Dropout2d after layer2",
    "dropblock": "shallow_cnn with DropBlock after layer2",
    "pbedropout": "shallow_cnn with PB-EDropout after layer2 (PBEDropoutCallback)",
    "pbedropout_frozen": "as pbedropout, its masks frozen from mid-training",
}
ERSM_MODELS = ("frozen_ersm", "ersm_inside", "ersm_inside_hard")
#: The models that are ours, not the papers' authors' (labelled "(ours)" in every table),
#: and what makes them ours; written into ``metrics.json`` as ``"ours"``.
OURS = {"ersm_inside_hard": "ERSM with gate='hard' at T = 0.1: the executed binary mask "
                            "in training"}
#: The model each one is compared with in the accuracy table.
REFERENCE = {"frozen_ersm": "baseline", "ersm_inside": "baseline",
             "ersm_inside_hard": "baseline", "dropout": "none",
             "dropout2d": "none", "dropblock": "none", "pbedropout": "none",
             "pbedropout_frozen": "none"}


def label(key: str) -> str:
    """A model's name in the report's tables: ``key``, with " (ours)" for :data:`OURS`."""
    return f"{key} (ours)" if key in OURS else key


# -- numbers -------------------------------------------------------------------------------------

def _values(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]


def _fmt(v, sign: bool = False) -> str:
    """``0.990`` for one seed, ``0.990 ± 0.006`` for several."""
    xs = _values(v)
    text = f"{mean(xs):+.3f}" if sign else f"{mean(xs):.3f}"
    return text + (f" ± {pstdev(xs):.3f}" if len(xs) > 1 else "")


def _diff(a, b):
    """Per-seed ``a - b`` (a float for one seed)."""
    xa, xb = _values(a), _values(b)
    if len(xa) != len(xb):
        raise ValueError(f"a and b must hold as many seeds, but got {len(xa)} and {len(xb)}")
    d = [x - y for x, y in zip(xa, xb, strict=True)]
    return d if len(d) > 1 else d[0]


def _seeds(d, positive: bool = True) -> str:
    xs = _values(d)
    if len(xs) < 2:
        return ""
    k = sum((x > 0) if positive else (x < 0) for x in xs)
    return f", {'ahead' if positive else 'behind'} on {k} of {len(xs)} seeds"


# -- claims --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One claim as this run measured it: ``verdict`` in {held, level, did not hold,
    not measured}, the numbers behind it and the rule that turned them into the verdict."""

    claim: str
    subject: str
    verdict: str
    evidence: str
    rule: str
    num_seeds: int = 1

    def reads(self, seeds: Sequence | None = None) -> str:
        """The verdict with the seeds behind it: ``"seed 0 only: held"``, ``"held (3 seeds)"``.

        ``seeds``: the run's seed numbers (named when one seed stands behind the verdict).
        """
        if self.verdict == "not measured":
            return self.verdict
        if self.num_seeds > 1:
            return f"{self.verdict} ({self.num_seeds} seeds)"
        named = seeds[0] if seeds is not None and len(seeds) == 1 else None
        return f"{'one seed' if named is None else f'seed {named}'} only: {self.verdict}"


def _compare(d, tol: float = TOLERANCE) -> str:
    m = mean(_values(d))
    return "held" if m > tol else "did not hold" if m < -tol else "level"


def _rule(what: str) -> str:
    return f"held when {what} > +{TOLERANCE}, level within ±{TOLERANCE}, else did not hold"


def verdicts(metrics: dict[str, Any]) -> list[Verdict]:
    """The papers' claims, each judged on this run's numbers (see each ``rule``)."""
    acc = metrics.get("test_accuracy", {})
    out: list[Verdict] = []
    ersm = [k for k in ERSM_MODELS if k in metrics]
    for key in ersm:
        if "baseline" in acc and key in acc:
            d = _diff(acc[key], acc["baseline"])
            out.append(Verdict(
                "ERSM preserves accuracy", label(key),
                "held" if mean(_values(d)) >= -TOLERANCE else "did not hold",
                f"test accuracy {_fmt(acc[key])} vs baseline {_fmt(acc['baseline'])} "
                f"(Δ {_fmt(d, True)})",
                f"held when the accuracy is at most {TOLERANCE} below the baseline's",
                _count(d)))
    for key in ersm:
        masks = metrics[key].get("masks", {})
        if "hard_sparsity" in masks:
            hard = mean(_values(masks["hard_sparsity"]))
            held = 0.5 <= hard < 1.0
            rule = ("held when the hard mask drops at least half of the tokens but not all "
                    "(0.5 <= hard sparsity < 1)")
            if "relative_sparsity" in masks:
                held = held and mean(_values(masks["relative_sparsity"])) >= 0.5
                rule += (" and at least half of the tokens are kept less than half as much as "
                         "the mean token (relative sparsity >= 0.5): a uniformly dimmed map "
                         "has a high hard sparsity and no relative sparsity")
            out.append(Verdict(
                "ERSM masks become sparse", label(key), "held" if held else "did not hold",
                f"hard sparsity {_fmt(masks['hard_sparsity'])}, mean keep "
                f"{_fmt(masks.get('keep_ratio', float('nan')))}"
                + "".join(f", {k.replace('_', ' ')} {_fmt(masks[k])}"
                          for k in ("relative_sparsity", "keep_gini") if k in masks),
                rule, _count(masks["hard_sparsity"])))
    for key in ersm:
        masks = metrics[key].get("masks", {})
        if "pointing" in masks:
            held = mean(_values(masks["pointing"])) >= 0.5
            if "keep_contrast" in masks:
                held = held and mean(_values(masks["keep_contrast"])) > 0
            out.append(Verdict(
                "ERSM masks find the object", label(key), "held" if held else "did not hold",
                f"pointing game {_fmt(masks['pointing'])}, IoU "
                f"{_fmt(masks.get('iou', float('nan')))}"
                + (f", keep contrast {_fmt(masks['keep_contrast'], True)}"
                   if "keep_contrast" in masks else ""),
                "held when the highest-kept token lies on the object in at least half of "
                "the test images (pointing >= 0.5)"
                + (" and the object is kept more than the background (keep contrast > 0)"
                   if "keep_contrast" in masks else ""), _count(masks["pointing"])))
    occ = metrics.get("occlusion", {})
    for placement, table in occ.items():
        for key in ersm:
            if key not in table or "baseline" not in table:
                continue
            f = _fractions(metrics, placement) or [None] * len(_points(table[key]))
            idx = [i for i, x in enumerate(f) if x != 0.0]
            d = [_diff(_point(table[key], i), _point(table["baseline"], i)) for i in idx]
            avg = _avg_over_points(d)
            claim = f"ERSM is robust to occlusion ({placement} placement)"
            evidence = (f"accuracy minus the baseline's, mean over f > 0: {_fmt(avg, True)}"
                        + _seeds(avg))
            rule = _rule("that mean difference")
            chance = 1.0 / metrics["num_classes"] if metrics.get("num_classes") else None
            if chance is not None and _all_at_chance(table, idx, chance):
                out.append(Verdict(claim, label(key), "cannot separate the models",
                                   f"every model is within {CHANCE_MARGIN} of chance "
                                   f"({chance:.2f}) at every f > 0 ({evidence})",
                                   "the fractions occlude too much for any model to stay "
                                   "above chance; smaller fractions are needed", _count(avg)))
                continue
            out.append(Verdict(claim, label(key), _compare(avg), evidence, rule, _count(avg)))
    for key in ersm:
        for protocol, d in deletion_results(metrics[key]).items():
            auc = d["auc"]
            if "energy" in auc and "magnitude" in auc:
                diff = _diff(auc["energy"], auc["magnitude"])
                out.append(Verdict(
                    f"Energy ranks tokens better than magnitude ({protocol} deletion)", label(key),
                    _compare(diff),
                    f"deletion AUC energy {_fmt(auc['energy'])} vs magnitude "
                    f"{_fmt(auc['magnitude'])} (Δ {_fmt(diff, True)}{_seeds(diff)})",
                    _rule("AUC(energy) - AUC(magnitude)"), _count(diff)))
    pb_claims = (("PB-EDropout beats standard dropout", "pbedropout", ("dropout", "dropout2d")),
                 ("PB-EDropout regularises (beats no dropout)", "pbedropout", ("none",)),
                 ("Frozen PB-EDropout masks still effective", "pbedropout_frozen", ("none",)))
    for claim, key, refs in pb_claims:
        present = [r for r in refs if r in acc]
        if key not in acc or not present:
            missing = [k for k in (key, *refs) if k not in acc]
            out.append(Verdict(claim, key, "not measured",
                               f"this run did not train {', '.join(missing)}", ""))
            continue
        for ref in present:
            d = _diff(acc[key], acc[ref])
            out.append(Verdict(claim, f"{key} vs {ref}", _compare(d),
                               f"test accuracy {_fmt(acc[key])} vs {_fmt(acc[ref])} "
                               f"(Δ {_fmt(d, True)}{_seeds(d)})", _rule("the difference"),
                               _count(d)))
    return out


def _fractions(metrics: dict[str, Any], placement: str) -> list | None:
    """The occluded fractions of ``placement``: ``occlusion_placements[placement]``, else
    the one list ``occlusion_fractions`` of runs that used the same for both."""
    return metrics.get("occlusion_placements", {}).get(placement) or metrics.get(
        "occlusion_fractions")


def _count(v) -> int:
    """How many seeds a value (float, or one per seed) holds."""
    return len(_values(v))


def _all_at_chance(table: dict, idx: list[int], chance: float) -> bool:
    """Whether every model's accuracy is within ``CHANCE_MARGIN`` of chance at every ``idx``."""
    return bool(idx) and all(abs(v - chance) <= CHANCE_MARGIN for curve in table.values()
                             for i in idx for v in _values(_point(curve, i)))


def _points(curve) -> list:
    """Seeds x points or points: the points of one curve (first seed's, for counting)."""
    return curve[0] if curve and isinstance(curve[0], (list, tuple)) else curve


def _point(curve, i: int):
    """The value at point ``i`` (a per-seed list when ``curve`` is seeds x points)."""
    return [c[i] for c in curve] if curve and isinstance(curve[0], (list, tuple)) else curve[i]


def _avg_over_points(diffs: list):
    if not diffs:
        return 0.0
    if isinstance(diffs[0], list):
        return [mean(col) for col in zip(*diffs, strict=True)]
    return mean(diffs)


def deletion_results(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``protocol -> DeletionResult dict`` of one ERSM model's metrics entry.

    ``entry["deletion"]`` is one result (its ``protocol``, or ``settings["protocol"]``,
    "binary" when it names none) or a dict ``protocol -> result``.
    """
    d = entry.get("deletion")
    if not d:
        return {}
    if "curves" in d:
        return {d.get("protocol") or d.get("settings", {}).get("protocol", "binary"): d}
    return dict(d)


# -- settings and machine ------------------------------------------------------------------------

def _layer_setting(layer: nn.Module, name: str):
    """A PB-EDropout setting, from its settings object when it has one."""
    holder = getattr(layer, "settings", layer)
    return getattr(holder, name, getattr(layer, name, None))


@torch.no_grad()
def model_settings(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, dict]:
    """Per model: parameter count, and each ERSM / PB-EDropout layer's settings.

    ERSM: the layer, token grid (from a forward of ``x``, (B, C, H, W)), token
    size, λ, γ, T, the gate ("soft": the authors'; "hard": ours) and the learned
    bias (mean). PB-EDropout: the layer, p, patch
    size and grid, β, generations.
    """
    out: dict[str, dict] = {}
    for key, model in models.items():
        entry: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
        layers = energy_mask_layers(model)
        if layers:
            with eval_mode(model):
                model(x[:1])
            entry["ersm"] = {name: {
                "token_grid": list(m.last_keep.shape[-2:]), "token_size": m.token_size,
                "lam": m.lam, "gamma": m.gamma, "temperature": m.temperature, "gate": m.gate,
                "learned_bias": float(m.bias.mean())} for name, m in layers.items()}
        pb = {n: m for n, m in model.named_modules() if isinstance(m, PBEDropout2d)}
        if pb:
            entry["pbedropout"] = {name: {
                "p": _layer_setting(m, "p"), "patch_size": _layer_setting(m, "patch_size"),
                "patch_grid": list(m.ema_mask.shape[1:]), "beta": _layer_setting(m, "beta"),
                "generations": _layer_setting(m, "generations")} for name, m in pb.items()}
        out[key] = entry
    return out


def machine() -> dict[str, Any]:
    """CPU count, torch threads, torch and Python versions, platform."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": "cpu"}


# -- the report ----------------------------------------------------------------------------------

def caption(name: str, metrics: dict[str, Any]) -> str:
    """The caption of figure ``name`` (its file name), in words a reader needs."""
    stem = Path(name).stem
    kind, _, key = stem.partition("_")
    if stem == "ersm_soft_vs_hard":
        return _soft_vs_hard_caption(metrics)
    if kind == "masks":
        return (f"{key}: per test image, the image (true and predicted class, red when "
                "wrong; red outline: the digit), the ERSM keep map on the token grid, the keep "
                "map over the image and the image times the keep map. Keep colours run from "
                "0 to 1 (colour bar), so a uniform map of keep 0.5 looks uniform.")
    if kind == "energies":
        return (f"{key}: the input; the logit z, which alone sets the keep (keep = "
                "sigmoid(-z / T): blue, z < 0, is kept more than half); the pairwise term P "
                "and the total energy E = U + P, which do not set the keep but weight it in "
                "the regulariser mean(keep · E), so a high E can sit where the keep is high. "
                "Each map has its own colour scale; the outer token ring (fewer neighbours, "
                "zero padding) is grey and left out of the P and E scales.")
    if kind == "deletion":
        return (f"{key}: accuracy as the ERSM layer's tokens are deleted in each ordering's "
                "order (AUC in the legend), the model's clean test accuracy (dashed) and "
                "chance (dotted); the protocol is named in the title.")
    if stem == "occlusion":
        return ("Accuracy under structured occlusion, patches placed at random (left) and on "
                "the object (right); thin lines carry each model's clean accuracy, the dotted "
                "line is chance.")
    if kind == "pbedropout":
        return ("PB-EDropout: how often each patch was kept during training (EMA of the "
                "chosen masks), per channel, on a 0 to 1 scale; crosses mark the patches "
                "the deterministic masks drop.")
    if kind == "training":
        return (f"{key}: training and validation loss, validation accuracy, mean keep and "
                "hard sparsity of the ERSM layer, over epochs.")
    return stem


def _soft_vs_hard_caption(metrics: dict[str, Any]) -> str:
    """The caption of the soft-beside-hard figure: one sentence on each map, with its
    temperature and its mean keep over the test split where the run recorded them."""
    def keep(key: str) -> str:
        masks = metrics.get(key, {}).get("masks", {})
        return f" (mean keep {_fmt(masks['keep_ratio'])} over the test split)" \
            if "keep_ratio" in masks else ""

    def temperature(key: str) -> str:
        layers = metrics.get("models", {}).get(key, {}).get("ersm", {})
        values = {layer.get("temperature") for layer in layers.values()} - {None}
        return f", T = {values.pop():g}" if len(values) == 1 else ""

    soft, hard = temperature("ersm_inside"), temperature("ersm_inside_hard")
    return ("ERSM after layer2 of small_cnn, the same test images, data and seed "
            "(red outline: the digit; pred: each model's class, red when wrong; one 0 to 1 "
            f"colour scale). Middle, the authors' soft gate (ersm_inside{soft}): "
            "the keep probability sigmoid(-z / T) that multiplies each token, so every token "
            f"passes dimmed, none is skipped{keep('ersm_inside')}. Right, ours, gate='hard' "
            f"(ersm_inside_hard{hard}): the binary mask "
            "1[keep >= 0.5] that the layer executes in training as in inference, each token "
            f"passed whole or zeroed{keep('ersm_inside_hard')}.")


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _mask_keys(metrics: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for key in ERSM_MODELS:
        for k in metrics.get(key, {}).get("masks", {}):
            if k not in keys:
                keys.append(k)
    known = [k for k in METRIC_DEFINITIONS if k in keys]
    return known + [k for k in keys if k not in known]


def _settings_rows(metrics: dict[str, Any]) -> list[Sequence[str]]:
    ersm_init = metrics.get("ersm_settings", {})
    rows = []
    for key, entry in metrics.get("models", {}).items():
        parts = []
        for name, s in entry.get("ersm", {}).items():
            grid = "x".join(str(g) for g in s["token_grid"])
            gate = s.get("gate", "soft")
            whose = "ours" if gate == "hard" else "the authors'"
            parts.append(f"ERSM at `{name}`: token grid {grid} (token size {s['token_size']}), "
                         f"λ {s['lam']:g}, γ {s['gamma']:g}, T {s['temperature']:g}, gate "
                         f"{gate} ({whose}), bias "
                         f"{ersm_init.get('bias_init', '?')} at init, {s['learned_bias']:.2f} "
                         "learned")
        for name, s in entry.get("pbedropout", {}).items():
            grid = "x".join(str(g) for g in s["patch_grid"])
            parts.append(f"PB-EDropout at `{name}`: p {s['p']}, patch {s['patch_size']} "
                         f"(grid {grid}), β {s['beta']}, generations {s['generations']}")
        rows.append((label(key), MODELS.get(key, ""), f"{entry['parameters']:,}",
                     "; ".join(parts) or "—"))
    return rows


def render(metrics: dict[str, Any], figures: Sequence[str]) -> str:
    """``report.md`` of a demo run from its ``metrics.json`` content and figure file names."""
    budget, acc = metrics.get("budget", {}), metrics.get("test_accuracy", {})
    seeds = metrics.get("seeds", [metrics.get("seed")])
    chance = 1.0 / metrics["num_classes"] if metrics.get("num_classes") else None
    lines = ["# energymask demo report", "",
             f"Cluttered digits (64x64 images, {metrics.get('num_classes', '?')} classes): "
             f"{budget.get('num_train', '?')} training, {budget.get('num_val', '?')} "
             f"validation and {budget.get('num_test', '?')} test images; epochs: "
             f"{budget.get('epochs')} ({budget.get('ersm_epochs')} for the frozen protocol's "
             "stage 2); seed"
             f"{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"
             + (" (mean ± std over seeds)" if len(seeds) > 1 else "")
             + (". A quick smoke run: too small for the numbers to mean anything."
                if metrics.get("quick") else "."), ""]
    lines += ["## Claims, as this run measured them", ""]
    lines += [("Each verdict names the seeds behind it. "
               + ("One seed stands behind every verdict here: a difference of a hundredth or "
                  "two can change sign with the seed, so read them as this seed's, not as "
                  "a finding." if len(seeds) == 1 else
                  f"Differences are means over {len(seeds)} seeds; the evidence says on how "
                  "many seeds each had the claimed sign.")), ""]
    lines += _table(("claim", "model", "verdict", "evidence", "rule"),
                    [(v.claim, v.subject, f"**{v.reads(seeds)}**", v.evidence, v.rule)
                     for v in verdicts(metrics)])
    lines += ["## Metrics", ""]
    defs = dict(METRIC_DEFINITIONS)
    for k in _mask_keys(metrics):
        defs.setdefault(k, "see energymask.mask_quality")
    lines += _table(("metric", "definition"), [(k, v) for k, v in defs.items()])
    lines += ["Mask metrics are per test image, then averaged over the test split."
              + (f" Chance accuracy is {chance:.2f}." if chance else ""), ""]
    lines += ["## Models and settings", ""]
    lines += _table(("model", "what", "parameters", "masking layers"), _settings_rows(metrics))
    lines += ["## Test accuracy", ""]
    lines += _table(("model", "test accuracy", "Δ vs reference"),
                    [(label(k), _fmt(v), f"{_fmt(_diff(v, acc[REFERENCE[k]]), True)} vs "
                      f"{REFERENCE[k]}" if REFERENCE.get(k) in acc else "—")
                     for k, v in acc.items()])
    keys = _mask_keys(metrics)
    if keys:
        lines += ["## ERSM masks", ""]
        lines += _table(("model", *keys), [(label(k), *(_fmt(metrics[k]["masks"][m])
                                                 if m in metrics[k]["masks"] else "—"
                                                 for m in keys))
                                           for k in ERSM_MODELS if k in metrics])
    lines += _deletion_section(metrics)
    lines += _occlusion_section(metrics)
    lines += ["## Figures", ""]
    for i, name in enumerate(figures, start=1):
        lines += [f"![{name}](figures/{name})", "", f"*Figure {i}.* {caption(name, metrics)}", ""]
    lines += _run_section(metrics)
    return "\n".join(lines)


def _deletion_section(metrics: dict[str, Any]) -> list[str]:
    rows, orderings = [], []
    for key in ERSM_MODELS:
        for protocol, d in deletion_results(metrics.get(key, {})).items():
            orderings += [o for o in d["auc"] if o not in orderings]
            start = _fmt(_point_all(d["curves"], 0))
            rows.append((label(key), protocol, str(d.get("num_samples", "?")), start,
                         *(_fmt(d["auc"][o]) if o in d["auc"] else "—" for o in orderings)))
    if not rows:
        return []
    width = 4 + len(orderings)
    rows = [tuple(r) + ("—",) * (width - len(r)) for r in rows]
    return ["## Deletion test", "",
            "AUC per ordering (higher = the ordering found the tokens the model can lose). "
            "The binary protocol forces the tokens not yet deleted to keep 1, a mask the "
            "model never saw in training, so its curve can start below the clean accuracy "
            "(column f = 0: mean over orderings at zero tokens deleted); the soft protocol "
            "keeps their soft keep values.", "",
            *_table(("model", "protocol", "images", "accuracy at f = 0",
                     *(f"AUC {o}" for o in orderings)), rows)]


def _point_all(curves: dict, i: int):
    """Mean over orderings of the value at point ``i``."""
    vals = [_point(c, i) for c in curves.values()]
    if vals and isinstance(vals[0], list):
        return [mean(col) for col in zip(*vals, strict=True)]
    return mean(vals) if vals else float("nan")


def _occlusion_section(metrics: dict[str, Any]) -> list[str]:
    occ = metrics.get("occlusion", {})
    if not occ:
        return []
    lines = ["## Structured occlusion", "",
             f"Accuracy with a fraction f of the image covered by zero-filled "
             f"{metrics.get('occlusion_patch_size', '?')}-pixel square patches.", ""]
    for placement, table in occ.items():
        n = len(_points(next(iter(table.values()))))
        fr = _fractions(metrics, placement) or list(range(n))
        lines += [f"Placement: {placement}", ""]
        lines += _table(("model", *(f"f = {x}" for x in fr)),
                        [(label(k), *(_fmt(_point(v, i)) for i in range(n)))
                         for k, v in table.items()])
    return lines


def _run_section(metrics: dict[str, Any]) -> list[str]:
    m = metrics.get("machine", {})
    lines = ["## Run", ""]
    timings = metrics.get("timings", {})
    if timings:
        lines += _table(("stage", "seconds"), [(k, f"{v:.0f}") for k, v in timings.items()])
    if "seconds" in metrics:
        lines.append(f"Total: {metrics['seconds']:.0f} s.")
    if m:
        lines.append(f"Machine: {m.get('cpus')} CPUs, {m.get('torch_threads')} torch threads, "
                     f"torch {m.get('torch')}, Python {m.get('python')}, {m.get('platform')}, "
                     f"device {m.get('device')}.")
    return [*lines, ""]


def write_report(out_dir: Path, metrics: dict[str, Any], figures: Sequence[str]) -> Path:
    """Write ``out_dir/report.md`` and return its path."""
    path = Path(out_dir) / "report.md"
    write_atomic(path, render(metrics, figures))
    return path
