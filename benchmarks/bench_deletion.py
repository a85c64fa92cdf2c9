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

``--devices 1 2`` times instead the deletion test in ``trainer.test`` with
:class:`~energymask.lightning_modules.robustness_callback.RobustnessTests` (ERSM after
``layer3.0``, energy / magnitude / random), on 1 and on 2 processes (``ddp``), side by
side: the test epoch (from a barrier at its start to its end, results reduced) and the
whole run with process start-up; the curves must be identical. On a GPU machine::

    python benchmarks/bench_deletion.py --devices 1 2 4 8 --accelerator gpu --images 2048 \
        --json benchmarks/results/deletion_devices.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def devices_worker(devices: int, accelerator: str, images: int, out: str) -> None:
    """One ``trainer.test`` with RobustnessTests on ``devices`` processes; rank 0 writes JSON."""
    import pytorch_lightning as pl

    from energymask.lightning_modules import ImageClassifier
    from energymask.lightning_modules._compat import Callback
    from energymask.lightning_modules.robustness_callback import RobustnessTests

    class EpochTimer(Callback):
        def on_test_epoch_start(self, trainer, pl_module) -> None:
            trainer.strategy.barrier()
            self.start = time.perf_counter()

        def on_test_epoch_end(self, trainer, pl_module) -> None:  # after RobustnessTests'
            if trainer.global_rank == 0:
                r = next(iter(tests.results.deletion.values()))
                Path(out).write_text(json.dumps({"epoch_s": time.perf_counter() - self.start,
                                                 "curves": r.curves, "auc": r.auc,
                                                 "num_samples": r.num_samples}))

    model = _model("layer3.0", "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, 64, 64, generator=g)
    with torch.no_grad():
        y = torch.cat([model(c).argmax(-1) for c in x.split(64)])
    tests = RobustnessTests(deletion={"orderings": ORDERINGS, "steps": 9, "steps_per_forward": 9},
                            occlusion=False, mask_quality=False, model="model", log=False)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices,
                         strategy="ddp" if devices > 1 else "auto", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[tests, EpochTimer()])
    trainer.test(ImageClassifier(model, 10), dataloaders=DataLoader(TensorDataset(x, y),
                                                                     batch_size=16),
                 verbose=False)


def run_devices(counts: list[int], accelerator: str, images: int, threads: int) -> dict:
    """Each device count in its own run of this script (ddp runs it again per rank)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            out = Path(tmp) / f"{n}.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--devices-worker", str(n), "--accelerator",
                            accelerator, "--images", str(images), "--threads", str(threads),
                            "--json", str(out)], check=True, capture_output=True)
            rows[n] = {"wall_s": time.perf_counter() - t0, **json.loads(out.read_text())}
    one = rows[counts[0]]
    for n, row in rows.items():
        row["identical"] = row["curves"] == one["curves"]
        if not row["identical"]:
            raise AssertionError(f"{n} processes: curves differ from {counts[0]}")
        print(f"resnet18 ERSM after layer3.0, {images} images 64x64, 9 steps x 3 orderings: "
              f"{n} process(es): test epoch {row['epoch_s']:.2f}s "
              f"({one['epoch_s'] / row['epoch_s']:.2f}x), whole run {row['wall_s']:.1f}s "
              f"({one['wall_s'] / row['wall_s']:.2f}x), curves identical")
    return {"model": "torchvision resnet18 (random weights), ERSM after layer3.0",
            "accelerator": accelerator, "threads_per_process": threads, "images": images,
            "results": {str(n): {k: v for k, v in r.items() if k != "curves"}
                        for n, r in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--device", default="cpu", help="torch device. Default: cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads. Default: torch's "
                        "(with --devices: 1 per process)")
    parser.add_argument("--devices", type=int, nargs="+", metavar="N",
                        help="time trainer.test with RobustnessTests on N processes, each N")
    parser.add_argument("--accelerator", default="cpu", help="with --devices. Default: cpu")
    parser.add_argument("--images", type=int, default=64, help="with --devices. Default: 64")
    parser.add_argument("--devices-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.devices_worker:
        torch.set_num_threads(args.threads or 1)
        devices_worker(args.devices_worker, args.accelerator, args.images, args.json)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.devices:
        out = run_devices(args.devices, args.accelerator, args.images, args.threads or 1)
    else:
        out = run(args.quick, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
