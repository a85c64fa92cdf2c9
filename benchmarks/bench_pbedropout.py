"""Training-step time of a shallow CNN with PB-EDropout vs nn.Dropout2d vs no dropout (CPU).

Model: ``shallow_cnn`` (3 conv blocks) + GAP + linear, 64x64 inputs, batch 128;
the dropout layer sits after block 1 and block 2. Steps are forward + backward
+ SGD step. Variants are interleaved step by step (``_timing.interleaved_medians``);
medians are reported with the load average seen during the run.
Goal (docs/design.md §8): PB-EDropout step <= 1.5x the Dropout2d step.

``--split`` then profiles a few PB-EDropout steps and reports the time in the
``pbedropout.*`` profiler ranges of ``pb_edropout_2d`` (unary energies, Gibbs
sampling, genetic refinement, mask application; profiler overhead included).

    python benchmarks/bench_pbedropout.py [--quick] [--split] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os

import torch
from _timing import interleaved_medians, machine, write_json
from torch import nn
from torch.profiler import ProfilerActivity, profile

from energymask.models import Classifier, shallow_cnn
from energymask.pbedropout import PBEDropout2d

KINDS = ("none", "dropout2d", "pbedropout")
PHASES = ("unary", "sample", "refine", "apply")


def build(kind: str, p: float, population: int, generations: int) -> nn.Module:
    torch.manual_seed(0)
    backbone = shallow_cnn(in_channels=1)
    for name in ("layer1", "layer2"):
        block = getattr(backbone, name)
        channels = block[0].out_channels
        if kind == "pbedropout":
            drop: nn.Module = PBEDropout2d(
                channels, p=p, patch_size=4, population=population,
                generations=generations, seed=0,
            )  # fmt: skip
        elif kind == "dropout2d":
            drop = nn.Dropout2d(p)
        else:
            drop = nn.Identity()
        block.append(drop)
    return Classifier(backbone, backbone.out_channels, 10).train()


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def phase_split(step, steps: int) -> dict[str, float]:
    """Mean ms per step in each ``pbedropout.<phase>`` range (both layers together)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    return {ph: totals.get(f"pbedropout.{ph}", 0.0) / 1e3 / steps for ph in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, batch 32")
    parser.add_argument("--split", action="store_true", help="profile the PB-EDropout phases")
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = 32 if args.quick else 128
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 64, 64, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    models = {k: build(k, args.p, args.population, args.generations) for k in KINDS}
    steps = {k: train_step(model, x, y) for k, model in models.items()}
    load_before = os.getloadavg()
    med = interleaved_medians(steps, repeats, warmup)
    load_after = os.getloadavg()
    result = {
        "machine": machine(),
        "load_average_1min": [load_before[0], load_after[0]],
        "batch": batch,
        "population": args.population,
        "generations": args.generations,
        "p": args.p,
        "repeats": repeats,
        "median_s": med,
        "ratio_pbedropout_vs_dropout2d": med["pbedropout"] / med["dropout2d"],
        "ratio_pbedropout_vs_none": med["pbedropout"] / med["none"],
        "ratio_dropout2d_vs_none": med["dropout2d"] / med["none"],
        "goal_ratio_vs_dropout2d": 1.5,
    }
    threads = torch.get_num_threads()
    print(f"batch {batch}, {repeats} interleaved repeats, medians, {threads} threads")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    for k in KINDS:
        print(f"{k:>11}: {med[k] * 1e3:8.1f} ms/step")
    print(f"PB-EDropout / Dropout2d: {result['ratio_pbedropout_vs_dropout2d']:.2f}x (goal <= 1.5x)")
    print(f"PB-EDropout / none:      {result['ratio_pbedropout_vs_none']:.2f}x")
    print(f"Dropout2d / none:        {result['ratio_dropout2d_vs_none']:.2f}x")
    if args.split:
        split = phase_split(steps["pbedropout"], max(2, repeats // 2))
        result["pbedropout_phase_ms_per_step"] = split
        total = sum(split.values())
        print("PB-EDropout phases (profiled, ms/step, both layers):")
        for ph, ms in split.items():
            print(f"  {ph:>7}: {ms:7.1f} ms ({100 * ms / total:4.1f}%)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
