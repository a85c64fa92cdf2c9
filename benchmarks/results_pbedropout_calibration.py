"""PB-EDropout's realised training drop rate per (p, β): uncalibrated (δ = 0) and calibrated.

The promise of docs/design.md §4: after a warm-up, the realised drop rate (share
of dropped patches per training step) is within ±0.01 of p. Inputs: ReLU of
standard normal feature maps (2, 8, 32, 32), a new one per step (seed = step),
patch 4 (8×8 grids), T = 0.1, layer seed 0: the setting of
``tests/core/test_pbedropout.py::test_realised_drop_rate_is_p_after_warm_up``.
Columns: mean rate over all steps with the calibration off (``calibration_rate=0``);
with it on (δ initialised on the first batch, ``initial_offset``, then integral
control): the rate of step 1, the mean over all steps, the worst mean of a block
of 10 steps (1-10, 11-20, ...), the mean and per-step std over steps
``warm-up..steps-1``, the final offset δ, and the share dropped by the
deterministic masks (⌊p·h·w⌉ / (h·w)).

    python benchmarks/results_pbedropout_calibration.py [--steps 80] [--warm-up 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _timing import machine, write_json

from energymask.pbedropout import PBEDropout2d, lowest_keep_mask

PS = (0.05, 0.1, 0.2, 0.3, 0.5)
BETAS = (0.1, 0.5)


def rates(p: float, beta: float, steps: int, calibration_rate: float | None) -> tuple:
    """Per-step drop rates of one layer, and the layer."""
    rate = {} if calibration_rate is None else {"calibration_rate": calibration_rate}
    layer = PBEDropout2d(8, p=p, beta=beta, seed=0, **rate).train()
    out = []
    for step in range(steps):
        x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(step)).relu()
        layer(x)
        out.append(layer.last_drop_rate)
    return out, layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warm-up", type=int, default=40)
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = []
    print(f"steps {args.steps}, calibrated mean over steps {args.warm_up}..{args.steps - 1}")
    print("|  β  |  p   | δ = 0 | step 1 | all steps | worst 10-step block | calibrated "
          "| per-step std | final δ | deterministic |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for beta in BETAS:
        for p in PS:
            plain, _ = rates(p, beta, args.steps, 0.0)
            calibrated, layer = rates(p, beta, args.steps, None)
            tail = calibrated[args.warm_up:]
            blocks = [statistics.fmean(calibrated[i:i + 10]) for i in range(0, args.steps, 10)]
            row = {"beta": beta, "p": p, "uncalibrated": statistics.fmean(plain),
                   "first_step": calibrated[0], "all_steps": statistics.fmean(calibrated),
                   "worst_block": max(blocks, key=lambda b: abs(b - p)),
                   "calibrated": statistics.fmean(tail), "std": statistics.stdev(tail),
                   "offset": float(layer.threshold_offset),
                   "deterministic": float(1 - lowest_keep_mask(layer.ema_mask, p).mean())}
            found.append(row)
            print(f"| {beta} | {p} | {row['uncalibrated']:.4f} | {row['first_step']:.4f} | "
                  f"{row['all_steps']:.4f} | {row['worst_block']:.4f} | {row['calibrated']:.4f} | "
                  f"{row['std']:.4f} | {row['offset']:+.3f} | {row['deterministic']:.4f} |",
                  flush=True)
    write_json(args.json, {"machine": machine(), "steps": args.steps, "warm_up": args.warm_up,
                           "rows": found})


if __name__ == "__main__":
    main()
