"""Fast deletion path vs the naive loop on torchvision ResNet-18 (docs/design.md §6, §8).

Same model, same data, same orderings (energy, magnitude, random): the fast
path (the model cut at the ERSM layer from its traced forward, masks stacked
along the batch) must give the naive loop's curves exactly; the time ratio is
printed and written with ``--json PATH``. Two placements of the ERSM layer:

- ``inside_backbone``: inserted after ``layer3.0`` (inside the backbone: the suffix is
  ``layer3.1``, ``layer4`` and the head, about a third of the network);
- ``head_side``: inserted after ``layer4`` (before the head: the suffix is the
  pool and the linear layer).

The gain is bounded by about (prefix + suffix) / suffix, plus what batching
the steps buys; the fast path's fixed cost (tracing, and a check on 3 images
worth about one forward of a batch) is paid once per call. Weights are random
(nothing is downloaded); labels are the clean predictions, so the curves are
informative.

    python benchmarks/bench_deletion.py [--quick] [--json PATH] [--device cuda] [--threads N]

(``results/deletion.json``: ``--threads 1 --json benchmarks/results/deletion.json``.)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from energymask import EnergyMask2d, insert_after
from energymask.deletion import deletion_curve

ORDERINGS = ("energy", "magnitude", "random")
PLACEMENTS = {"inside_backbone": "layer3.0", "head_side": "layer4"}


def _model(after: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    insert_after(model, [after], lambda n, c: EnergyMask2d(c, bias_init=0.0))
    return model.to(device).eval()


def _time(device: str, *args, **kwargs) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = deletion_curve(*args, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def run(quick: bool, device: str = "cpu") -> dict:
    n_images, batch, size, steps = (4, 4, 64, 5) if quick else (32, 16, 128, 17)
    results = {}
    for name, after in PLACEMENTS.items():
        model = _model(after, device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_images, 3, size, size, generator=g).to(device)
        with torch.no_grad():
            y = model(x).argmax(-1)
        dl = DataLoader(TensorDataset(x, y), batch_size=batch)
        kw = dict(orderings=ORDERINGS, steps=steps, progress=False)
        deletion_curve(model, dl, **{**kw, "steps": 2})  # warm-up: tracing, allocator
        t_fast, fast = _time(device, model, dl, steps_per_forward=steps, **kw)
        t_naive, naive = _time(device, model, dl, method="naive", **kw)
        if fast.curves != naive.curves:
            raise AssertionError(f"{name}: fast and naive curves differ")
        if fast.settings["method"] != "fast":
            raise AssertionError(f"{name}: the fast path fell back to the naive loop")
        results[name] = {
            "inserted_after": after,
            "tokens": fast.num_tokens,
            "steps": len(fast.steps),
            "images": n_images,
            "input_size": size,
            "batch": batch,
            "fast_s": t_fast,
            "naive_s": t_naive,
            "speedup": t_naive / t_fast,
            "identical": True,
            "auc": fast.auc,
        }
        print(
            f"resnet18 ERSM after {after:8s} N={fast.num_tokens} steps={len(fast.steps)} "
            f"images={n_images} ({size}x{size}): fast {t_fast:.3f}s naive {t_naive:.3f}s "
            f"-> {t_naive / t_fast:.1f}x (identical curves)"
        )
    return {
        "model": "torchvision resnet18 (random weights)",
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
    parser.add_argument("--threads", type=int, help="torch CPU threads. Default: torch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args.quick, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
