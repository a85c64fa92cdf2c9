"""ERSM quality table (issue 8): do the ERSM paper's claims hold on cluttered digits?

For each seed, on cluttered digits and on its spurious-background variant
(class-correlated backgrounds in train, shuffled in test), trains the baseline
``small_cnn`` and the ERSM models of :data:`VARIANTS` with the recipes of
``energymask.lightning_modules.app.recipes`` (the ones ``energymask demo`` uses),
and measures test accuracy, keep ratio, hard sparsity, mask-object IoU,
pointing game, deletion AUC per ordering (energy, magnitude, random, Grad-CAM,
FeatureAblation) and accuracy under random structured occlusion. Prints a
markdown table of mean ± std over seeds and one line per claim saying whether
it held, computed from the numbers.

    python benchmarks/results_ersm.py            # 3 seeds, about 30 min on 2 cores
    python benchmarks/results_ersm.py --quick    # tiny data, 1 seed, about a minute

``--gate`` (issue 20) instead compares the authors' soft mask with ours,
``gate="hard"`` (the binary mask in training and inference), beside the
baseline, in three settings: ERSM inside ``small_cnn`` (after ``layer2``),
inside a torchvision ResNet-18 trained from scratch at 64 px (after
``layer2``, 1-channel stem) and the frozen protocol (ERSM before the head of
the trained ``small_cnn``). Per model: test accuracy, executed keep ratio,
undecided share of the executed map and of the soft keep after the first
epoch and at the end, IoU, pointing, deletion AUC (energy, magnitude,
random) and random occlusion; writes benchmarks/results/ersm_gate.{json,md}:

    python benchmarks/results_ersm.py --gate --seeds 0 --json benchmarks/results/ersm_gate_s0.json
    python benchmarks/results_ersm.py --gate --from-json a.json b.json c.json  # merge parts

``--gates`` picks the variants (default: the authors' soft, ours hard, ours
hard with a budget; the remedies of :data:`REMEDIES`, ours, on request) and
``--masks-only`` skips deletion and occlusion (the remedies' short search,
docs/design.md §3). ``--from-json`` merges parts by seed and setting, so a
part may add a setting (ResNet-18 at its own ``--num-train``/``--epochs``) or
a variant's rows beside an earlier run's; the table gives each setting's budget.

Writes benchmarks/results/ersm.{json,md} by default (``--json``/``--md`` move them;
``--quick`` writes only where asked). Seeded runs repeat exactly at the same torch
thread count (recorded in the JSON); CPU reductions in another order (1 vs 2
threads) move single accuracies by up to ~0.01.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from _timing import machine
from torch import nn

from energymask.evaluation import DEFAULT_FRACTIONS, ORDERINGS
from energymask.lightning_modules.app import recipes as ex

RESULTS = Path(__file__).parent / "results"
FRACTIONS = (0.1, 0.25, 0.5)
#: name -> (recipe, EnergyMask2d settings). "authors" = λ = γ = 1e-3, T = 1, bias 6.
VARIANTS = {
    "frozen_ersm (authors)": ("frozen", {"bias_init": 6.0}),
    "frozen_ersm (bias 0)": ("frozen", {"bias_init": 0.0}),
    "ersm_inside (authors)": ("inside", {"bias_init": 6.0}),
    "ersm_inside (bias 0)": ("inside", {"bias_init": 0.0}),
}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_seed(budget: ex.Budget, seed: int, spurious: float | None, full_eval: bool) -> dict:
    """Every model of one seed: accuracy, and (``full_eval``) masks, deletion, occlusion.

    ``spurious``: None for clean data, else the spurious-background strength.
    """
    dm = (ex.datamodule(budget, seed) if spurious is None
          else ex.datamodule(budget, seed, spurious=True, spurious_strength=spurious))
    t = time.perf_counter()
    baseline, acc = ex.train_baseline(dm, budget, seed, progress=False)
    out = {"baseline": {"accuracy": acc, "seconds": time.perf_counter() - t}}
    models = {"baseline": baseline}
    for name, (recipe, settings) in VARIANTS.items():
        t = time.perf_counter()
        if recipe == "frozen":
            model, acc = ex.train_frozen_ersm(baseline, dm, budget, seed, False, **settings)
        else:
            model, acc = ex.train_ersm_inside(dm, budget, seed, progress=False, **settings)
        row = {"accuracy": acc}
        if full_eval:  # masks and deletion
            row.update(ex.evaluate_ersm(model, dm, budget, seed, progress=False))
        else:
            row["masks"] = ex.ersm_mask_scores(model, ex.eval_loader(dm))
        row["seconds"] = time.perf_counter() - t
        out[name], models[name] = row, model
        _log(f"  seed {seed} {'clean' if spurious is None else 'spurious'} {name}: "
             f"accuracy {acc:.3f}, "
             f"keep {row['masks']['keep_ratio']:.3f}, {row['seconds']:.0f} s")
    if full_eval:
        occ = ex.occlusion(models, dm, seed, progress=False)
        for name, accs in occ["random"].items():
            out[name]["occlusion"] = dict(zip(map(str, DEFAULT_FRACTIONS), accs, strict=True))
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: list[float]) -> str:
    m, s = _stats(values)
    return f"{m:.3f} ± {s:.3f}"


def _collect(runs: list[dict], name: str, *path: str) -> list[float]:
    out = []
    for run in runs:
        v = run[name]
        for key in path:
            v = v[key]
        out.append(float(v))
    return out


def tables(results: dict) -> str:
    clean, spurious = results["clean"], results["spurious"]
    names = ["baseline", *VARIANTS]
    strength = results.get("spurious_strength", 0.9)
    lines = [f"Cluttered digits, {len(clean)} seeds, mean ± std. Spurious: train "
             f"backgrounds match the class with probability {strength}, test backgrounds "
             "are shuffled. Deletion AUC: accuracy "
             "averaged over the deleted fraction, least important first (higher = better "
             "ordering). Occlusion: random 8x8 patches covering a fraction f.", "",
             "| model | test acc | spurious test acc | keep ratio | hard sparsity | IoU | "
             "pointing | " + " | ".join(f"occl. f={f}" for f in FRACTIONS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(FRACTIONS)]
    for name in names:
        cells = [_pm(_collect(clean, name, "accuracy")), _pm(_collect(spurious, name, "accuracy"))]
        if name == "baseline":
            cells += ["—"] * 4
        else:
            cells += [_pm(_collect(clean, name, "masks", k))
                      for k in ("keep_ratio", "hard_sparsity", "iou", "pointing")]
        cells += [_pm(_collect(clean, name, "occlusion", str(f))) for f in FRACTIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(f"AUC {o}" for o in ORDERINGS) + " |",
              "|---|" + "---|" * len(ORDERINGS)]
    for name in VARIANTS:
        lines.append(f"| {name} | " + " | ".join(
            _pm(_collect(clean, name, "deletion", "auc", o)) for o in ORDERINGS) + " |")
    return "\n".join(lines)


def claims(results: dict) -> list[str]:
    """One line per claim of the ERSM paper, computed from the numbers."""
    clean, spurious = results["clean"], results["spurious"]
    base = _stats(_collect(clean, "baseline", "accuracy"))
    lines = []
    for name in VARIANTS:
        acc = _stats(_collect(clean, name, "accuracy"))
        diff = acc[0] - base[0]
        held = diff >= -0.01
        lines.append(f"- Accuracy preserved ({name}): {'held' if held else 'did not hold'}: "
                     f"{acc[0]:.3f} vs baseline {base[0]:.3f} ({diff:+.3f}; held = within "
                     "1 point or better).")
    for name in VARIANTS:
        sparsity = _stats(_collect(clean, name, "masks", "hard_sparsity"))[0]
        keep = _stats(_collect(clean, name, "masks", "keep_ratio"))[0]
        iou = _stats(_collect(clean, name, "masks", "iou"))[0]
        selective = 0.1 <= sparsity <= 0.9
        why = ("the hard mask (keep >= 0.5) closes almost every token: the soft mask scales "
               "the features down rather than selecting tokens" if sparsity > 0.9
               else "the hard mask keeps almost every token" if sparsity < 0.1
               else "a part of the tokens is closed")
        lines.append(f"- Emergent sparsity ({name}): {'held' if selective else 'did not hold'}: "
                     f"hard sparsity {sparsity:.3f}, keep ratio {keep:.3f}, IoU with the "
                     f"object {iou:.3f}; {why} (held = 10-90% of tokens closed).")
    for name in VARIANTS:
        diffs = [statistics.fmean(_collect(clean, name, "occlusion", str(f)))
                 - statistics.fmean(_collect(clean, "baseline", "occlusion", str(f)))
                 for f in FRACTIONS]
        held = all(d > 0 for d in diffs)
        lines.append(f"- Robustness to structured occlusion ({name}): "
                     f"{'held' if held else 'did not hold'}: accuracy minus baseline at f = "
                     + ", ".join(f"{f}: {d:+.3f}" for f, d in zip(FRACTIONS, diffs, strict=True))
                     + " (held = better at every f).")
    for name in VARIANTS:
        energy = _collect(clean, name, "deletion", "auc", "energy")
        magnitude = _collect(clean, name, "deletion", "auc", "magnitude")
        wins = sum(e > m for e, m in zip(energy, magnitude, strict=True))
        diff = statistics.fmean(energy) - statistics.fmean(magnitude)
        held = diff > 0 and wins > len(energy) / 2
        lines.append(f"- Energy ranking beats magnitude ranking in deletion ({name}): "
                     f"{'held' if held else 'did not hold'}: AUC {_pm(energy)} vs "
                     f"{_pm(magnitude)} ({diff:+.3f}; energy higher in {wins}/{len(energy)} "
                     "seeds; held = higher on average and in most seeds).")
    sbase = _collect(spurious, "baseline", "accuracy")
    for name in VARIANTS:
        acc = _collect(spurious, name, "accuracy")
        wins = sum(a > b for a, b in zip(acc, sbase, strict=True))
        diff = statistics.fmean(acc) - statistics.fmean(sbase)
        held = diff > 0 and wins > len(acc) / 2
        lines.append(f"- Spurious backgrounds ({name}): {'better' if held else 'not better'} "
                     f"than the baseline on the shuffled-background test split: {_pm(acc)} vs "
                     f"{_pm(sbase)} ({diff:+.3f}; higher in {wins}/{len(acc)} seeds).")
    return lines


def report(results: dict, quick: bool) -> str:
    return "\n".join([tables(results), "", "Claims:", *results["claims"], "",
                      f"({results['seconds'] / 60:.1f} min; `python benchmarks/results_ersm.py"
                      f"{' --quick' if quick else ''}`)"])


# ---- issue 20: the authors' soft mask beside ours, gate="hard" ------------------------

#: The gate table's budget (2 shared CPU cores): fewer images and epochs than Budget().
GATE_BUDGET = ex.Budget(num_train=1200, num_val=200, num_test=500, epochs=4, ersm_epochs=2,
                        batch_size=32, deletion_steps=9, deletion_samples=128)
#: label -> EnergyMask2d settings over the application's (λ = γ = 1e-3, T = 1, bias 0).
GATES = {"soft (authors')": {"gate": "soft"}, "hard (ours)": {"gate": "hard"},
         "hard + budget 0.4 (ours)": {"gate": "hard", "keep_target": 0.4}}
#: Ours, remedies of the logits' narrow range (docs/design.md §3), chosen by ``--gates``.
REMEDIES = {"hard T=0.3 (ours)": {"gate": "hard", "temperature": 0.3},
            "hard T=0.1 (ours)": {"gate": "hard", "temperature": 0.1},
            "hard T=0.03 (ours)": {"gate": "hard", "temperature": 0.03},
            "hard + noise 1 (ours)": {"gate": "hard", "gate_noise": 1.0},
            "hard T=0.1 + noise 1 (ours)": {"gate": "hard", "temperature": 0.1,
                                            "gate_noise": 1.0}}
ALL_GATES = {**GATES, **REMEDIES}
GATE_SETTINGS = ("small_cnn", "resnet18", "frozen")
GATE_ORDERINGS = ("energy", "magnitude", "random")


def resnet18_64px(in_channels: int) -> tuple[nn.Module, int]:
    """torchvision ResNet-18 trunk (no weights) with an ``in_channels`` stem, for 64 px."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    from energymask.models import feature_extractor

    return feature_extractor(net), 512


def _train_inside(backbone: str, dm, budget: ex.Budget, seed: int, settings: dict | None,
                  log_dir: Path | None) -> tuple[nn.Module, float]:
    """``backbone`` (small_cnn or resnet18) from scratch; ERSM after ``layer2`` unless None."""
    from energymask.lightning_modules.app.settings import ERSM_SETTINGS
    from energymask.lightning_modules.classifier import ImageClassifier
    from energymask.lightning_modules.ersm_callback import ERSMCallback
    from energymask.models import Classifier, small_cnn

    torch.manual_seed(seed)
    if backbone == "small_cnn":
        net = small_cnn(dm.in_channels)
        net, channels = net, net.out_channels
    else:
        net, channels = resnet18_64px(dm.in_channels)
    model = Classifier(net, channels, dm.num_classes)
    module = ImageClassifier(model, dm.num_classes, lr=budget.lr, max_epochs=budget.epochs)
    callbacks = []
    if settings is not None:
        callbacks.append(ERSMCallback("model.backbone.layer2", log_stats=log_dir is not None,
                                      **{**ERSM_SETTINGS, **settings}))
    return model, ex.fit(module, dm, budget.epochs, seed, callbacks, False, log_dir)


def _first_epoch(log_dir: Path) -> dict[str, float]:
    """Validation mask scores of the first epoch from the CSV log (undecided shares, keep)."""
    import csv

    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    out = {}
    for row in rows:
        for key, value in row.items():
            for score in ("undecided", "soft_undecided", "keep_ratio"):
                if key.endswith(f"/{score}") and key.startswith("val_ersm/") and value:
                    if row.get("epoch") == "0" and score not in out:
                        out[score] = float(value)
    return out


def run_gate_seed(budget: ex.Budget, seed: int, settings: tuple[str, ...], work: Path,
                  gates: dict[str, dict] = GATES, masks_only: bool = False) -> dict:
    """Baseline and the ``gates`` models of every setting for one seed.

    ``masks_only``: mask scores only, no deletion or occlusion (the remedies' search).
    """
    dm = ex.datamodule(budget, seed)
    out: dict[str, dict] = {}
    baseline_small = None
    for setting in settings:
        rows: dict[str, dict] = {}
        models: dict[str, nn.Module] = {}
        t = time.perf_counter()
        if setting == "frozen":
            if baseline_small is None:
                baseline_small, _ = _train_inside("small_cnn", dm, budget, seed, None, None)
            base, acc = baseline_small, out.get("small_cnn", {}).get("baseline", {}).get(
                "accuracy")
            if acc is None:
                from energymask.evaluation import accuracy as _accuracy

                acc = _accuracy(base, ex.eval_loader(dm))
        else:
            base, acc = _train_inside(setting, dm, budget, seed, None, None)
            if setting == "small_cnn":
                baseline_small = base
        rows["baseline"] = {"accuracy": acc, "seconds": time.perf_counter() - t}
        models["baseline"] = base
        for label, gate in gates.items():
            t = time.perf_counter()
            name = label.split(' (')[0].replace(' ', '').replace('=', '').replace('+', '_')
            log_dir = work / f"{setting}_{name}_seed{seed}"
            if setting == "frozen":
                model, acc = ex.train_frozen_ersm(base, dm, budget, seed, False,
                                                  bias_init=0.0, **gate)
                first = {}
            else:
                model, acc = _train_inside(setting, dm, budget, seed, gate, log_dir)
                first = _first_epoch(log_dir)
            row = {"accuracy": acc, "first_epoch": first}
            if masks_only:
                row["masks"] = ex.ersm_mask_scores(model, ex.eval_loader(dm))
            else:
                row.update(ex.evaluate_ersm(model, dm, budget, seed, progress=False,
                                            orderings=GATE_ORDERINGS))
            row["seconds"] = time.perf_counter() - t
            rows[label], models[label] = row, model
            _log(f"  seed {seed} {setting} {label}: accuracy {acc:.3f}, keep "
                 f"{row['masks']['keep_ratio']:.3f}, {row['seconds']:.0f} s")
        if not masks_only:
            occ = ex.occlusion(models, dm, seed, progress=False)
            for name, accs in occ["random"].items():
                rows[name]["occlusion"] = dict(zip(map(str, DEFAULT_FRACTIONS), accs,
                                                   strict=True))
        out[setting] = rows
    return out


def _budget_text(b: dict) -> str:
    return (f"{b['num_train']} training images, {b['epochs']} epochs (frozen stage 2: "
            f"{b['ersm_epochs']}), batch {b['batch_size']}, lr {b['lr']}, {b['num_test']} test "
            f"images; deletion on {b['deletion_samples']} images, {b['deletion_steps']} steps")


def gate_tables(results: dict) -> str:
    runs = results["runs"]
    n = len(runs)
    budgets = results.get("budgets") or {s: results["budget"] for s in results["settings"]}
    texts = {s: _budget_text(b) for s, b in budgets.items()}
    if len(set(texts.values())) == 1:
        budget_line = ("Budget (2 shared CPU cores, smaller than the issue's): "
                       f"{next(iter(texts.values()))}.")
    else:
        budget_line = "Budgets (2 shared CPU cores, smaller than the issue's): " + "; ".join(
            f"{s}: {t}" for s, t in texts.items()) + "."
    lines = [f"ERSM gate (issue 20): the authors' soft mask vs ours, gate=\"hard\" (binary "
             f"mask in training and inference, straight-through gradient), beside the baseline. "
             f"Cluttered digits, {n} seed(s), mean ± std. {budget_line} "
             "λ = γ = 1e-3, T = 1 unless the row says, bias 0 for every gate. "
             "Keep = executed keep ratio; undecided = share of tokens with keep in (0.1, 0.9) "
             "of the executed map / of the soft keep sigmoid(−z/T), at the end (test) and after "
             "the first epoch (validation).", "",
             "| setting | model | test acc | keep | undecided exec. | undecided soft | "
             "epoch-1 undecided exec. / soft | IoU | pointing | AUC energy | AUC magnitude | "
             "AUC random | occl. f=0.25 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting in results["settings"]:
        for name in runs[0][setting]:
            rs = [r[setting][name] for r in runs]
            cells = [_pm([r["accuracy"] for r in rs])]
            if name == "baseline":
                cells += ["—"] * 9
            else:
                def m(k: str, rs: list = rs) -> str:
                    return _pm([r["masks"][k] for r in rs])

                first = [r.get("first_epoch", {}) for r in rs]
                if all("undecided" in f for f in first):
                    epoch1 = (f"{_pm([f['undecided'] for f in first])} / "
                              f"{_pm([f['soft_undecided'] for f in first])}")
                else:
                    epoch1 = "not logged"
                cells += [m("keep_ratio"), m("undecided"), m("soft_undecided"), epoch1,
                          m("iou"), m("pointing")]
                cells += [_pm([r["deletion"]["auc"][o] for r in rs]) if "deletion" in rs[0]
                          else "—" for o in GATE_ORDERINGS]
            cells.append(_pm([r["occlusion"]["0.25"] for r in rs]) if "occlusion" in rs[0]
                         else "—")
            lines.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_goals(results: dict) -> list[str]:
    """Issue 20's goals for each variant of ours, held / not held, from the numbers."""
    runs, lines = results["runs"], []
    soft = "soft (authors')"
    for setting in results["settings"]:
        def mean(name: str, *path: str, setting: str = setting) -> float:
            return statistics.fmean(_dig(r[setting][name], path) for r in runs)

        base = mean("baseline", "accuracy")
        for hard in (k for k in runs[0][setting] if "ours" in k):
            tag = f"{setting}, {hard}"
            acc, keep = mean(hard, "accuracy"), mean(hard, "masks", "keep_ratio")
            held = keep <= 0.5 and acc >= base - 0.005
            lines.append(f"- {tag}: executed keep <= 0.5 with accuracy within 0.5 points of "
                         f"the baseline: {'held' if held else 'not held'} (keep {keep:.3f}, "
                         f"accuracy {acc:.3f} vs baseline {base:.3f}, {acc - base:+.3f}).")
            firsts = [r[setting][hard].get("first_epoch", {}) for r in runs]
            if all("undecided" in f for f in firsts):
                ex_u = statistics.fmean(f["undecided"] for f in firsts)
                soft_u = statistics.fmean(f["soft_undecided"] for f in firsts)
                lines.append(f"- {tag}: at most 10% undecided tokens after the first epoch: "
                             f"{'held' if ex_u <= 0.1 else 'not held'} on the executed map "
                             f"({ex_u:.3f}; binary by construction); on the soft keep behind "
                             f"it {'held' if soft_u <= 0.1 else 'not held'} ({soft_u:.3f}).")
            point = mean(hard, "masks", "pointing")
            if soft not in runs[0][setting]:
                lines.append(f"- {tag}: pointing {point:.3f}, IoU "
                             f"{mean(hard, 'masks', 'iou'):.3f} (the authors' soft not run).")
                continue
            lines.append(f"- {tag}: pointing >= 0.9: {'held' if point >= 0.9 else 'not held'} "
                         f"({point:.3f}; authors' soft {mean(soft, 'masks', 'pointing'):.3f}).")
            iou_h, iou_s = mean(hard, "masks", "iou"), mean(soft, "masks", "iou")
            lines.append(f"- {tag}: IoU clearly above the authors' (by 0.05 or more): "
                         f"{'held' if iou_h >= iou_s + 0.05 else 'not held'} "
                         f"({iou_h:.3f} vs {iou_s:.3f}).")
    return lines


def _dig(row: dict, path: tuple[str, ...]) -> float:
    for key in path:
        row = row[key]
    return float(row)


def merge_gate_parts(parts: list[dict]) -> dict:
    """One result of several ``--gate --json`` runs: rows merged by seed and setting.

    A part may hold other seeds, other settings or other gates of a setting
    (e.g. a remedy's rows added beside the first run's); a row run twice keeps
    the last part's. The parts that run one setting must share its budget
    (``ValueError`` otherwise): the table gives one budget per setting.
    """
    seeds: list[int] = []
    runs: dict[int, dict] = {}
    budgets: dict[str, dict] = {}
    gates: dict[str, dict] = {}
    for part in parts:
        gates.update(part.get("gates", {}))
        for setting in part["settings"]:
            budget = part.get("budgets", {}).get(setting, part["budget"])
            if budgets.setdefault(setting, budget) != budget:
                raise ValueError(f"the parts run {setting} with different budgets: "
                                 f"{budgets[setting]} and {budget}")
        for seed, run in zip(part["seeds"], part["runs"], strict=True):
            if seed not in runs:
                seeds.append(seed)
                runs[seed] = {}
            for setting, rows in run.items():
                runs[seed].setdefault(setting, {}).update(rows)
    settings = [s for s in GATE_SETTINGS if s in budgets]
    return {**parts[0], "seeds": seeds, "runs": [runs[s] for s in seeds], "budgets": budgets,
            "settings": settings, "gates": gates, "seconds": sum(p["seconds"] for p in parts)}


def gate_main(args: argparse.Namespace) -> int:
    if args.from_json:
        results = merge_gate_parts([json.loads(p.read_text()) for p in args.from_json])
    else:
        budget = ex.QUICK if args.quick else GATE_BUDGET
        if args.num_train:
            budget = replace(budget, num_train=args.num_train)
        if args.epochs:
            budget = replace(budget, epochs=args.epochs)
        seeds = args.seeds[:1] if args.quick else args.seeds
        settings = tuple(args.settings)
        work = Path(args.work)
        start = time.perf_counter()
        gates = {k: ALL_GATES[k] for k in args.gates}
        results = {"machine": machine(), "budget": budget.to_dict(), "seeds": seeds,
                   "budgets": {s: budget.to_dict() for s in settings},
                   "settings": list(settings), "gates": gates, "masks_only": args.masks_only,
                   "runs": []}
        for seed in seeds:
            results["runs"].append(run_gate_seed(budget, seed, settings, work, gates,
                                                 args.masks_only))
        results["seconds"] = time.perf_counter() - start
    results["goals"] = gate_goals(results)
    text = "\n".join([gate_tables(results), "", "Goals (issue 20, ours = gate=\"hard\"):",
                      *results["goals"], "",
                      f"({results['seconds'] / 60:.1f} min of runs, summed over the seeds' "
                      f"processes; `{args.command}`)"])
    print(text)
    write_outputs(results, text, args.json, args.md)
    return 0


def write_outputs(results: dict, text: str, json_path: Path | None, md_path: Path | None) -> None:
    """``results`` as JSON to ``json_path`` and ``text`` to ``md_path``, each when given."""
    for path, content in ((json_path, json.dumps(results, indent=2)), (md_path, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny data, one seed")
    parser.add_argument("--num-train", type=int, help="training images (default: Budget's)")
    parser.add_argument("--epochs", type=int, help="epochs from scratch (default: Budget's)")
    parser.add_argument("--spurious-strength", type=float, default=0.5, metavar="P",
                        help="spurious variant: probability that a training background "
                        "matches the class (default: %(default)s; at 0.9 every model, "
                        "baseline included, reads only the background)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--md", type=Path, help="write the tables and claims here")
    parser.add_argument("--from-json", type=Path, metavar="PATH", nargs="+",
                        help="no training: print the tables and claims of a saved --json "
                        "(with --gate: one or more, their seeds merged)")
    parser.add_argument("--gate", action="store_true",
                        help="issue 20: soft (authors') vs hard (ours) gate, beside the baseline")
    parser.add_argument("--settings", nargs="+", default=list(GATE_SETTINGS),
                        choices=GATE_SETTINGS, help="--gate: where ERSM goes")
    parser.add_argument("--gates", nargs="+", default=list(GATES), choices=list(ALL_GATES),
                        metavar="LABEL", help="--gate: the ERSM variants (default: "
                        f"{list(GATES)}; remedies, ours: {list(REMEDIES)})")
    parser.add_argument("--masks-only", action="store_true",
                        help="--gate: mask scores only, no deletion or occlusion")
    parser.add_argument("--work", default="benchmarks/results/ersm_gate_logs",
                        help="--gate: folder of the training logs")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "benchmarks/results_ersm.py",
                               *(sys.argv[1:] if argv is None else argv)])
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    if args.gate:
        return gate_main(args)
    if args.from_json:
        args.from_json = args.from_json[0]
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["claims"] = claims(results)
        print(report(results, args.quick))
        return 0
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    budget = ex.QUICK if args.quick else ex.Budget()
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.num_train:
        budget = replace(budget, num_train=args.num_train)
    if args.epochs:
        budget = replace(budget, epochs=args.epochs)
    if not args.quick:
        args.json = args.json or RESULTS / "ersm.json"
        args.md = args.md or RESULTS / "ersm.md"
    start = time.perf_counter()
    results = {"machine": machine(), "budget": budget.to_dict(), "seeds": seeds,
               "spurious_strength": args.spurious_strength,
               "variants": {k: {"recipe": r, **s} for k, (r, s) in VARIANTS.items()},
               "clean": [], "spurious": []}
    for seed in seeds:
        results["clean"].append(run_seed(budget, seed, spurious=None, full_eval=True))
        results["spurious"].append(run_seed(budget, seed, spurious=args.spurious_strength,
                                            full_eval=False))
    results["claims"] = claims(results)
    results["seconds"] = time.perf_counter() - start
    text = report(results, args.quick)
    print(text)
    write_outputs(results, text, args.json, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
