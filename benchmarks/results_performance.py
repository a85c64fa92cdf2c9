"""The performance table of docs/design.md §8: every speed goal, measured in one run.

Runs the benchmark scripts one after the other (each measures its variants side
by side, interleaved), reads their JSON, and prints one markdown table of the
ratios against their goals. Nothing is hard-coded: every figure comes from the
run that prints it.

    python benchmarks/results_performance.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import machine, write_json

HERE = Path(__file__).resolve().parent


def run_bench(script: str, out: Path, extra: list[str]) -> dict:
    """Run ``benchmarks/<script>`` with ``--json`` and return what it wrote."""
    path = out / f"{Path(script).stem}.json"
    cmd = [sys.executable, str(HERE / script), "--json", str(path), *extra]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(path.read_text())


def rows(ersm: dict, pbed: dict, deletion: dict, kernels: dict | None) -> list[dict]:
    """One row per goal: what, measured ratio, goal, and whether it was met."""
    dl = deletion["results"]
    table = [
        ("ERSM training step, layer before the head / none",
         ersm["train_ratio_head"], "<=", 1.10),
        ("ERSM training step, layer inside the backbone / none",
         ersm["train_ratio_inside"], "<=", 1.10),
        ("Inference with a hard ERSM mask / none", ersm["inference_ratio_hard"], "<=", 1.05),
        ("PB-EDropout training step / nn.Dropout2d",
         pbed["ratio_pbedropout_vs_dropout2d"], "<=", 1.5),
        ("Deletion test, naive loop / fast path (head-side layer)",
         dl["head_side"]["speedup"], ">=", 20.0),
        ("Deletion test, naive loop / fast path (layer inside the backbone)",
         dl["inside_backbone"]["speedup"], None, None),
    ]
    out = []
    for what, value, op, goal in table:
        met = None if goal is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"what": what, "ratio": value, "goal": f"{op} {goal}" if goal else "",
                    "met": met})
    if kernels is not None:
        for row in kernels["rows"]:
            for label in ("triton", "compile"):
                key = f"speedup_{label}_vs_eager"
                if key in row:
                    out.append({"what": f"kernel {row['kernel']} {row['size']}: "
                                        f"eager / {label}",
                                "ratio": row[key], "goal": "", "met": None})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| measurement | ratio | goal | met |", "|---|---:|---|---|"]
    for r in table:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['what']} | {r['ratio']:.2f}x | {r['goal']} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--kernels", action="store_true",
                        help="also run bench_kernels.py (slow on CPU: torch.compile)")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ersm = run_bench("bench_ersm_overhead.py", out, quick)
        pbed = run_bench("bench_pbedropout.py", out, quick)
        deletion = run_bench("bench_deletion.py", out, quick)
        kernels = run_bench("bench_kernels.py", out, quick) if args.kernels else None
    table = rows(ersm, pbed, deletion, kernels)
    print()
    print(markdown(table))
    write_json(args.json, {"machine": machine(), "quick": args.quick, "table": table,
                           "raw": {"ersm_overhead": ersm, "pbedropout": pbed,
                                   "deletion": deletion, "kernels": kernels}})


if __name__ == "__main__":
    main()
