"""PB-EDropout vs no dropout, nn.Dropout, nn.Dropout2d and DropBlock: test accuracy.

Every regulariser sits after ``layer2`` of ``shallow_cnn`` (cluttered digits,
64x64, 10 classes), all with the same drop rate ``p``, trained by
``experiments.train_regularised`` (Lightning, CPU). Rows: no dropout,
``nn.Dropout``, ``nn.Dropout2d``, DropBlock (timm-style, block 3), PB-EDropout
with its defaults, PB-EDropout with masks frozen from mid-training
(``freeze_at_epoch = epochs // 2``), and the ablations PB-EDropout with β = 0
(no Gibbs coupling between patches) and with G = 0 (no genetic refinement).
Each row is the mean ± sample std over the seeds; a seed fixes the data split,
the initialisation and the dropout draws, so rows of one seed share their data.

The two claims of the papers, "PB-EDropout beats standard dropout" and "frozen
masks still effective", are tested on these numbers: the lines under the table
are computed from them, never written by hand.

Budget. With the default ``Budget()`` (3000 training images, 6 epochs) the plain
model already reaches ~0.99 test accuracy, a ceiling where regularisers cannot
differ. The default here is 500 training images and 14 epochs: in a short
exploration (seed 0, p = 0.1, 2 busy CPU cores) no dropout reached 0.624 after
10 epochs and 0.746 after 15, PB-EDropout 0.736 after 15, at 48-76 s per run.
That is far from the ceiling (and still rising with epochs), so a regulariser
has room to help or hurt; 14 rather than 15 epochs to aim at 8 rows x 3 seeds of
~60 s, ~25 minutes on 2 cores. Measured: the full run took 52.6 min on 2 cores
shared with another training (load 3-7), ~105 s per baseline run and ~130-195 s
per PB-EDropout run. With the calibrated layer the table was re-run on a machine
shared by 8 jobs (load 8-15), with 10 epochs and 50 validation images (the
validation set is unused by the table), the three seeds side by side::

    for s in 0 1 2; do
      OMP_NUM_THREADS=1 python benchmarks/results_pbedropout.py --seeds $s
          --num-train 500 --epochs 10 --num-val 50 --json seed$s.json &
    done; wait
    python benchmarks/results_pbedropout.py --from-json seed0.json seed1.json seed2.json
        --json benchmarks/results/pbedropout.json --md benchmarks/results/pbedropout.md

(With 300 images for 6 epochs, 30 steps, every model stayed at chance.) The JSON
is written after every row, so a killed run keeps its finished rows; tables and
claims use the complete rows only (the header says PARTIAL otherwise).

    python benchmarks/results_pbedropout.py [--quick] [--seeds 0 1 2] [--p 0.1]
        [--num-train N] [--epochs E] [--num-val N] [--json PATH] [--md PATH]
        [--from-json PATH [PATH ...]]

Without ``--quick`` and without ``--json`` / ``--md`` it writes
``benchmarks/results/pbedropout.{json,md}``; ``--quick`` (``experiments.QUICK``
sizes, one epoch, seed 0) writes only what it is asked to. ``--from-json``
trains nothing and rebuilds the table and claims from earlier JSON files.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _timing import machine, write_json

from energymask.lightning_modules.app import recipes as ex
from energymask.pbedropout import PBEDropout2d, PBEDropoutSettings

HERE = Path(__file__).resolve().parent
DEFAULT_BUDGET = replace(ex.Budget(), num_train=500, epochs=14)
_PB_DEFAULTS = asdict(PBEDropoutSettings())


def rows(epochs: int) -> list[dict[str, Any]]:
    """Every row: key, label, regulariser kind and its extra settings."""
    beta, gens = _PB_DEFAULTS["beta"], _PB_DEFAULTS["generations"]
    freeze = epochs // 2
    return [
        {"key": "none", "label": "no dropout", "kind": "none", "kwargs": {}},
        {"key": "dropout", "label": "nn.Dropout", "kind": "dropout", "kwargs": {}},
        {"key": "dropout2d", "label": "nn.Dropout2d", "kind": "dropout2d", "kwargs": {}},
        {"key": "dropblock", "label": "DropBlock (block 3)", "kind": "dropblock",
         "kwargs": {}},
        {"key": "pbedropout", "label": f"PB-EDropout (β={beta}, G={gens})",
         "kind": "pbedropout", "kwargs": {}},
        {"key": "pbedropout_frozen", "label": f"PB-EDropout, frozen from epoch {freeze}",
         "kind": "pbedropout", "kwargs": {"freeze_at_epoch": freeze}},
        {"key": "pbedropout_beta0", "label": f"PB-EDropout β=0 (G={gens})",
         "kind": "pbedropout", "kwargs": {"beta": 0.0}},
        {"key": "pbedropout_g0", "label": f"PB-EDropout G=0 (β={beta})",
         "kind": "pbedropout", "kwargs": {"generations": 0}},
    ]


def run_all(budget: ex.Budget, seeds: list[int], p: float,
            save: Any = None) -> dict[str, dict[str, list]]:
    """Train every row for every seed (seeds outer, so rows share the machine's noise).

    ``save(raw)``, when given, is called after every row (partial results survive a kill).
    """
    table = rows(budget.epochs)
    raw: dict[str, dict[str, list]] = {r["key"]: {"accuracy": [], "seconds": []}
                                       for r in table}
    for seed in seeds:
        dm = ex.datamodule(budget, seed)
        for r in table:
            start = time.perf_counter()
            model, acc = ex.train_regularised(dm, budget, seed, r["kind"], p=p, progress=False,
                                              **r["kwargs"])
            secs = time.perf_counter() - start
            raw[r["key"]]["accuracy"].append(acc)
            raw[r["key"]]["seconds"].append(secs)
            for key, value in drop_stats(model).items():
                raw[r["key"]].setdefault(key, []).append(value)
            print(f"[{r['key']:>17}] seed {seed}: test accuracy {acc:.4f} ({secs:.1f} s) "
                  f"{drop_stats(model)}", file=sys.stderr, flush=True)
            if save is not None:
                save(raw)
    return raw


def drop_stats(model: Any) -> dict[str, float]:
    """PB-EDropout's drop rate of the last training step, of its deterministic masks, and δ."""
    layers = [m for m in model.modules() if isinstance(m, PBEDropout2d)]
    if not layers or layers[0].last_drop_rate is None:
        return {}
    layer = layers[0]
    mask = layer.deterministic_mask()
    return {"last_step_drop_rate": layer.last_drop_rate,
            "deterministic_drop_rate": float(1.0 - mask.mean()),
            "threshold_offset": float(layer.threshold_offset)}


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(raw: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    out = {}
    for key, r in raw.items():
        out[key] = {"mean": statistics.fmean(r["accuracy"]), "std": _std(r["accuracy"]),
                    "seconds_mean": statistics.fmean(r["seconds"])}
        for stat in ("last_step_drop_rate", "deterministic_drop_rate", "threshold_offset"):
            if r.get(stat):
                out[key][stat] = statistics.fmean(r[stat])
    for key in out:
        for ref in ("none", "dropout2d"):
            if ref not in raw:
                continue
            diffs = _paired(raw, key, ref)
            out[key][f"diff_{ref}"] = statistics.fmean(diffs)
            out[key][f"diff_{ref}_std"] = _std(diffs)
    return out


def _paired(raw: dict[str, dict[str, list]], a: str, b: str) -> list[float]:
    """Per-seed differences ``a - b`` (rows of one seed share data split and init)."""
    return [x - y for x, y in zip(raw[a]["accuracy"], raw[b]["accuracy"], strict=True)]


def _diff(s: dict[str, float], ref: str) -> str:
    if f"diff_{ref}" not in s:
        return "–"
    return f"{s[f'diff_{ref}']:+.3f} ± {s[f'diff_{ref}_std']:.3f}"


def _drop(s: dict[str, float]) -> str:
    if "last_step_drop_rate" not in s:
        return "–"
    return f"{s['last_step_drop_rate']:.3f} / {s['deterministic_drop_rate']:.3f}"


def _ms(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _gap(diff: float, spread: float) -> str:
    where = "outside" if abs(diff) > spread else "within"
    return f"difference {diff:+.3f}, {where} one std ({spread:.3f})"


def _wins(raw: dict[str, dict[str, list]], a: str, b: str) -> str:
    diffs = _paired(raw, a, b)
    return (f"paired per seed {statistics.fmean(diffs):+.3f} ± {_std(diffs):.3f}, "
            f"ahead on {sum(d > 0 for d in diffs)}/{len(diffs)} seeds")


def claims(summary: dict[str, dict[str, float]], raw: dict[str, dict[str, list]],
           freeze_epoch: int) -> list[dict[str, Any]]:
    """The papers' two claims and the two ablations, each decided by the numbers.

    A claim whose rows were not measured (a partial run) is left out.
    """
    s = summary
    if not {"none", "dropout", "dropout2d", "pbedropout"} <= set(s):
        return []
    pb = s["pbedropout"]
    best = max(("dropout", "dropout2d"), key=lambda k: s[k]["mean"])
    diff = pb["mean"] - s[best]["mean"]
    spread = max(pb["std"], s[best]["std"])
    held = diff > 0
    names = {"dropout": "Dropout", "dropout2d": "Dropout2d"}
    dropblock = f", DropBlock {_ms(s['dropblock'])}" if "dropblock" in s else ""
    beats = (
        f"PB-EDropout beats standard dropout: {'held' if held else 'did not hold'}: "
        f"PB-EDropout {_ms(pb)} vs Dropout {_ms(s['dropout'])}, Dropout2d "
        f"{_ms(s['dropout2d'])}{dropblock}, no dropout "
        f"{_ms(s['none'])} (vs the better of "
        f"Dropout/Dropout2d, {names[best]}: {_gap(diff, spread)}; "
        f"{_wins(raw, 'pbedropout', best)})"
    )

    found: list[dict[str, Any]] = [
        {"claim": "PB-EDropout beats standard dropout", "held": held, "difference": diff,
         "spread": spread, "compared_with": best, "line": beats}]
    if "pbedropout_frozen" not in s:
        return found
    fr = s["pbedropout_frozen"]
    d_pb = fr["mean"] - pb["mean"]
    d_none = fr["mean"] - s["none"]["mean"]
    spread_pb = max(fr["std"], pb["std"])
    held_frozen = d_none > 0 and d_pb >= -spread_pb
    failed = [why for why, bad in (
        ("frozen does not beat no dropout", d_none <= 0),
        ("frozen loses more than one std to PB-EDropout", d_pb < -spread_pb)) if bad]
    frozen = (
        f"Frozen masks still effective (frozen from epoch {freeze_epoch}; held = above no "
        f"dropout and within one std of un-frozen PB-EDropout): "
        f"{'held' if held_frozen else 'did not hold (' + '; '.join(failed) + ')'}: "
        f"frozen {_ms(fr)} vs PB-EDropout "
        f"{_ms(pb)} ({_gap(d_pb, spread_pb)}; {_wins(raw, 'pbedropout_frozen', 'pbedropout')}) "
        f"and vs no dropout {_ms(s['none'])} ({_gap(d_none, max(fr['std'], s['none']['std']))}; "
        f"{_wins(raw, 'pbedropout_frozen', 'none')})"
    )

    found.append({"claim": "frozen masks still effective", "held": held_frozen,
                  "difference_vs_pbedropout": d_pb, "difference_vs_none": d_none,
                  "spread": spread_pb, "line": frozen})
    for key, what in (("pbedropout_beta0", f"Gibbs coupling (β={_PB_DEFAULTS['beta']} vs 0)"),
                      ("pbedropout_g0",
                       f"genetic refinement (G={_PB_DEFAULTS['generations']} vs 0)")):
        if key not in s:
            continue
        d = pb["mean"] - s[key]["mean"]
        sp = max(pb["std"], s[key]["std"])
        found.append({
            "claim": what, "held": d > 0, "difference": d, "spread": sp,
            "line": f"Ablation, what the {what} adds: {d:+.3f} "
                    f"(PB-EDropout {_ms(pb)} vs {_ms(s[key])}; "
                    f"{'outside' if abs(d) > sp else 'within'} one std ({sp:.3f}); "
                    f"{_wins(raw, 'pbedropout', key)})",
        })
    return found


def markdown(summary: dict[str, dict[str, float]], raw: dict[str, dict[str, list]],
             table: list[dict[str, Any]], found: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| regulariser | test accuracy | Δ vs none | Δ vs Dropout2d | per seed | s / run "
             "| drop rate |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in table:
        if r["key"] not in summary:
            continue
        s = summary[r["key"]]
        seeds = ", ".join(f"{a:.3f}" for a in raw[r["key"]]["accuracy"])
        lines.append(f"| {r['label']} | {_ms(s)} | {_diff(s, 'none')} | "
                     f"{_diff(s, 'dropout2d')} | {seeds} | {s['seconds_mean']:.0f} | "
                     f"{_drop(s)} |")
    lines += ["", "Δ: mean ± std of the per-seed differences (a seed's rows share their "
                  "data split and initialisation). s / run: wall seconds per training run. "
                  "drop rate (PB-EDropout): share of patches dropped in the last training step "
                  "(sampled, or deterministic when frozen) / by the deterministic masks "
                  "(⌊p·h·w⌉ patches per channel), mean over seeds.",
              ""]
    lines.extend(f"- {c['line']}" for c in found)
    return "\n".join(lines)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of other seeds with the same budget and p (raw lists joined).

    ``wall_seconds`` is the longest run's: the runs are meant to run side by side.
    """
    first = runs[0]
    for run in runs[1:]:
        for key in ("budget", "p", "quick"):
            if run[key] != first[key]:
                raise ValueError(f"--from-json files differ in {key}: {first[key]} vs {run[key]}")
    raw = {key: {stat: [v for run in runs for v in run["raw"].get(key, {}).get(stat, [])]
                 for stat in first["raw"][key]} for key in first["raw"]}
    return {**first, "seeds": [s for run in runs for s in run["seeds"]], "raw": raw,
            "wall_seconds": max(run["wall_seconds"] for run in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="experiments.QUICK sizes (1 epoch), seed 0; writes nothing "
                             "unless --json/--md")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--p", type=float, default=0.1, help="drop rate of every kind")
    parser.add_argument("--num-train", type=int, default=None,
                        help=f"training images (default {DEFAULT_BUDGET.num_train}, "
                             f"{ex.QUICK.num_train} with --quick)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default {DEFAULT_BUDGET.epochs}, "
                             f"{ex.QUICK.epochs} with --quick)")
    parser.add_argument("--num-val", type=int, default=None,
                        help=f"validation images, checked every epoch, unused by the table "
                             f"(default {DEFAULT_BUDGET.num_val})")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the numbers here")
    parser.add_argument("--md", metavar="PATH", default=None, help="write the markdown here")
    parser.add_argument("--from-json", metavar="PATH", nargs="+", default=None,
                        help="train nothing: rebuild the table and claims from the raw "
                             "numbers of earlier --json files (several: runs of other seeds "
                             "with the same budget, merged; writes only --json/--md)")
    args = parser.parse_args()

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    budget = ex.QUICK if args.quick else DEFAULT_BUDGET
    if args.num_train is not None:
        budget = replace(budget, num_train=args.num_train)
    if args.epochs is not None:
        budget = replace(budget, epochs=args.epochs)
    if args.num_val is not None:
        budget = replace(budget, num_val=args.num_val)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    p, quick, run_machine = args.p, args.quick, machine()
    json_path, md_path = args.json, args.md
    if not (quick or args.from_json) and json_path is None and md_path is None:
        json_path = str(HERE / "results" / "pbedropout.json")
        md_path = str(HERE / "results" / "pbedropout.md")

    if args.from_json:
        old = merge([json.loads(Path(path).read_text()) for path in args.from_json])
        budget, seeds, p = ex.Budget(**old["budget"]), old["seeds"], old["p"]
        raw, wall, quick, run_machine = old["raw"], old["wall_seconds"], old["quick"], \
            old["machine"]
    else:
        start = time.perf_counter()

        def save(partial: dict[str, dict[str, list]]) -> None:
            write_json(json_path, {"machine": run_machine, "quick": quick, "partial": True,
                                   "budget": budget.to_dict(), "seeds": seeds, "p": p,
                                   "raw": partial, "wall_seconds": time.perf_counter() - start})

        raw = run_all(budget, seeds, p, save)
        wall = time.perf_counter() - start
    raw = {k: v for k, v in raw.items() if len(v["accuracy"]) == len(seeds)}  # complete rows
    table = rows(budget.epochs)
    summary = summarise(raw)
    found = claims(summary, raw, budget.epochs // 2)
    header = (f"PB-EDropout vs dropout baselines, shallow_cnn, cluttered digits: "
              f"{budget.num_train} training / {budget.num_val} validation / "
              f"{budget.num_test} test images, "
              f"{budget.epochs} epochs, p = {p}, seeds {seeds} "
              f"(mean ± std over seeds); total {wall / 60:.1f} min"
              f"{' (--quick)' if quick else ''}"
              f"{'' if len(raw) == len(table) else f'; PARTIAL: {len(raw)} of {len(table)} rows'}")
    md = markdown(summary, raw, table, found, header)
    print(md)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(md + "\n")
        print(f"wrote {md_path}")
    write_json(json_path, {
        "machine": run_machine,
        "quick": quick,
        "budget": budget.to_dict(),
        "seeds": seeds,
        "p": p,
        "pbedropout_defaults": {k: v for k, v in _PB_DEFAULTS.items()
                                if isinstance(v, int | float | str | bool)},
        "rows": [{k: r[k] for k in ("key", "label", "kind", "kwargs")} for r in table],
        "raw": raw,
        "summary": summary,
        "claims": found,
        "wall_seconds": wall,
    })


if __name__ == "__main__":
    main()
