"""Image-folder scan and read times: header-only scan (lazy decoding) vs decoding everything.

Generates a class-per-sub-folder tree of JPEGs the size of CUB-200's (500x375,
smooth content plus noise, quality 90), then times, in this order:

1. ``ImageFolder(root, scan="decode")``: every image decoded at scan (before issue 26);
2. ``ImageFolder(root)`` (``scan="header"``): each file's header read, no pixels;
3. one pass of a DataLoader over the lazy folder (resized to 64x64, batch 64) with
   0 and with ``--workers`` worker processes: where the decoding now happens.

The OS file cache is warm for every timing after the generation (the same files
are read each time), so the scan times compare decoding, not disk reads.

    python benchmarks/bench_image_folder.py [--images 3000] [--workers 2] [--root DIR]
                                            [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import machine, write_json
from PIL import Image
from torch.utils.data import DataLoader

from energymask.data.image_folder import ImageFolder

CLASSES = 20
SIZE = (375, 500)  # (H, W), CUB-200's typical image


def generate(root: Path, images: int, seed: int = 0) -> None:
    """``images`` JPEGs in ``CLASSES`` class folders (skipped when ``root`` holds them)."""
    if root.is_dir() and sum(1 for _ in root.glob("*/*.jpg")) == images:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]].astype(np.float32)
    for i in range(images):
        folder = root / f"class_{i % CLASSES:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        base = 127 + 100 * np.sin(fx * xx + fy * yy + phase)
        img = base[..., None] + rng.normal(0, 12, (*SIZE, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_pass(root: Path, workers: int) -> None:
    ds = ImageFolder(root, size=(64, 64), progress=False)
    for _ in DataLoader(ds, batch_size=64, num_workers=workers):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, help="where the tree is generated (kept); "
                        "default: a temporary folder, removed after")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = None if args.root else tempfile.mkdtemp(prefix="energymask-bench-")
    root = args.root or Path(tmp) / "tree"
    try:
        generated = seconds(lambda: generate(root, args.images))
        mb = sum(p.stat().st_size for p in root.glob("*/*.jpg")) / 2**20
        print(f"{args.images} JPEGs {SIZE[1]}x{SIZE[0]} in {CLASSES} classes, {mb:.0f} MB "
              f"({generated:.1f} s to generate); load average {os.getloadavg()[0]:.2f}")
        times = {
            "scan_decode_all": seconds(lambda: ImageFolder(root, scan="decode", progress=False)),
            "scan_headers": seconds(lambda: ImageFolder(root, progress=False)),
            "read_pass_workers_0": seconds(lambda: one_pass(root, 0)),
            f"read_pass_workers_{args.workers}": seconds(lambda: one_pass(root, args.workers)),
        }
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, t in times.items():
        print(f"{name:24s} {t:8.2f} s  ({1000 * t / args.images:.2f} ms per image)")
    ratios = {
        "scan_decode_all / scan_headers": times["scan_decode_all"] / times["scan_headers"],
        f"read_pass_workers_0 / read_pass_workers_{args.workers}":
            times["read_pass_workers_0"] / times[f"read_pass_workers_{args.workers}"],
    }
    for name, r in ratios.items():
        print(f"{name:48s} {r:6.1f}x")
    write_json(args.json, {"images": args.images, "image_size": list(SIZE), "megabytes": mb,
                           "seconds": times, "ratios": ratios,
                           "load_average": os.getloadavg()[0], "machine": machine()})


if __name__ == "__main__":
    main()
