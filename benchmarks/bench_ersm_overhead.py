"""ERSM layer cost, measured side by side in one run (docs/design.md §8).

- training step (forward, backward, AdamW step) of the small CNN classifier with
  an ERSM layer after ``backbone.layer3`` (head side) and after ``backbone.layer2``
  (inside), against the same model without ERSM. Goal: <= 1.10x.
- inference with a hard ERSM mask against the model without ERSM. Goal: <= 1.05x.

    python benchmarks/bench_ersm_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import interleaved_medians, machine, write_json

from energymask import Classifier, EnergyMask2d, collect_regularizer, insert_after, small_cnn


def build(where: str | None, hard: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Classifier(small_cnn(1, (16, 32, 64)), 64, 10)
    if where:
        insert_after(
            model, where, lambda name, c: EnergyMask2d(c, bias_init=0.0, hard_inference=hard)
        )
    return model


def train_step(model, optimizer, x, y):
    def step():
        loss = F.cross_entropy(model(x), y)
        reg = collect_regularizer(model)
        if reg is not None:
            loss = loss + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    batch, repeats = (16, 5) if args.quick else (64, 20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 64, 64, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    variants = {
        "none": build(None),
        "ersm_head": build("backbone.layer3"),
        "ersm_inside": build("backbone.layer2"),
    }
    steps = {}
    for name, model in variants.items():
        model.train()
        steps[name] = train_step(model, torch.optim.AdamW(model.parameters(), 1e-3), x, y)
    train = interleaved_medians(steps, repeats)

    plain = build(None).eval()
    hard = build("backbone.layer3", hard=True).eval()

    def infer(model):
        def run():
            with torch.inference_mode():
                model(x)

        return run

    infer_times = interleaved_medians({"none": infer(plain), "ersm_hard": infer(hard)}, repeats * 2)

    results = {
        "machine": machine(),
        "batch": batch,
        "repeats": repeats,
        "train_step_s": train,
        "train_ratio_head": train["ersm_head"] / train["none"],
        "train_ratio_inside": train["ersm_inside"] / train["none"],
        "inference_s": infer_times,
        "inference_ratio_hard": infer_times["ersm_hard"] / infer_times["none"],
        "goals": {"train_ratio": 1.10, "inference_ratio_hard": 1.05},
    }
    print(f"batch {batch}, 64x64, small_cnn (16, 32, 64), {repeats} interleaved repeats, medians")
    for name, t in train.items():
        print(f"  train step {name:12s} {t * 1e3:8.2f} ms  ratio {t / train['none']:.3f}x")
    for name, t in infer_times.items():
        print(f"  inference  {name:12s} {t * 1e3:8.2f} ms  ratio {t / infer_times['none']:.3f}x")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
