"""Fast deletion path vs the naive loop (DESIGN.md §6, §8).

Same model, same data, same orderings (energy, magnitude, random), every step
0..N: the fast path must give identical accuracies; the time ratio is printed
and written with ``--json PATH``. Two set-ups: ERSM before the head
(FrozenBackboneClassifier, 64x64 -> 8x8 = 64 tokens) and ERSM inside the
backbone (Classifier with ERSM after ``backbone.layer2``, 32x32 -> 8x8 = 64 tokens).

The fast path saves the prefix (network before the layer) for all but one
forward per batch; its gain is bounded by about (prefix + suffix) / suffix,
plus what batching the steps buys. Before the head the suffix is a pool and a
linear layer, so the gain is large; inside the backbone the remaining blocks
run for every step and the gain is small.

    python benchmarks/bench_deletion.py [--quick] [--json PATH] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from energymask import Classifier, EnergyMask2d, FrozenBackboneClassifier, insert_after, small_cnn
from energymask.deletion import deletion_curve

ORDERINGS = ("energy", "magnitude", "random")


def _head_side(widths: tuple[int, ...]) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    return FrozenBackboneClassifier(small_cnn(3, widths), widths[-1], 10, bias_init=-1.0), 64


def _inside(widths: tuple[int, ...]) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    model = Classifier(small_cnn(3, widths), widths[-1], 10)
    insert_after(model, ["backbone.layer2"], lambda n, c: EnergyMask2d(c, bias_init=-1.0))
    return model, 32


def _time(repeats: int, *args, **kwargs) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = deletion_curve(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool, device: str = "cpu") -> dict:
    # best of 3 for the fast path (short, noisy); the naive loop runs long enough once
    n_images, batch, repeats = (8, 8, 3) if quick else (32, 32, 3)
    widths = (8, 16, 32) if quick else (32, 64, 128)
    results = {}
    for name, make in (("head_side", _head_side), ("inside_backbone", _inside)):
        model, size = make(widths)
        model.to(device).eval()
        with torch.no_grad():  # no bias: predictions follow the kept tokens
            model.head.bias.zero_()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_images, 3, size, size, generator=g)
        with torch.no_grad():  # labels = clean predictions: curves start at 1 and decay
            y = model(x.to(device)).argmax(-1).cpu()
        dl = DataLoader(TensorDataset(x.to(device), y.to(device)), batch_size=batch)
        kw = dict(orderings=ORDERINGS)
        deletion_curve(model, dl, steps=2, **kw)  # warm-up: lazy imports, allocator
        t_fast, fast = _time(repeats, model, dl, steps_per_forward=65, **kw)
        t_naive, naive = _time(1, model, dl, method="naive", **kw)
        assert fast.curves == naive.curves, f"{name}: fast and naive curves differ"
        assert fast.settings["method"] == "fast"
        results[name] = {
            "tokens": fast.num_tokens,
            "steps": len(fast.steps),
            "images": n_images,
            "widths": list(widths),
            "batch": batch,
            "fast_s": t_fast,
            "naive_s": t_naive,
            "speedup": t_naive / t_fast,
            "identical": True,
            "auc": fast.auc,
        }
        print(
            f"{name:16s} N={fast.num_tokens} steps={len(fast.steps)} images={n_images}: "
            f"fast {t_fast:.3f}s naive {t_naive:.3f}s -> {t_naive / t_fast:.1f}x (identical)"
        )
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "quick": quick,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--device", default="cpu", help="torch device. Default: cpu")
    args = parser.parse_args()
    out = run(args.quick, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
