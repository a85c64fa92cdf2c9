"""Training-step time of a shallow CNN with PB-EDropout vs nn.Dropout2d vs no dropout (CPU).

Model: ``shallow_cnn`` (3 conv blocks) + GAP + linear, 64x64 inputs, batch 128;
the dropout layer sits after block 1 and block 2. Steps are forward + backward
+ SGD step. Variants are interleaved repeat by repeat; medians are reported.
Goal (DESIGN.md §8): PB-EDropout step <= 1.5x the Dropout2d step.

    python benchmarks/bench_pbedropout.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from energymask.models import Classifier, shallow_cnn
from energymask.pbedropout import PBEDropout2d


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
    return Classifier(backbone, backbone.out_channels, 10)


def step_time(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, batch 32")
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--p", type=float, default=0.2)
    args = parser.parse_args()
    batch = 32 if args.quick else 128
    repeats = 3 if args.quick else 10
    warmup = 1 if args.quick else 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 64, 64, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    kinds = ("none", "dropout2d", "pbedropout")
    models = {k: build(k, args.p, args.population, args.generations).train() for k in kinds}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(warmup + repeats):
        for k in kinds:
            t = step_time(models[k], opts[k], x, y)
            if r >= warmup:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
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
    for k in kinds:
        print(f"{k:>11}: {med[k] * 1e3:8.1f} ms/step (median of {repeats})")
    print(f"PB-EDropout / Dropout2d: {result['ratio_pbedropout_vs_dropout2d']:.2f}x (goal <= 1.5x)")
    print(f"PB-EDropout / none:      {result['ratio_pbedropout_vs_none']:.2f}x")
    print(f"Dropout2d / none:        {result['ratio_dropout2d_vs_none']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
