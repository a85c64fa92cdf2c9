"""PB-EDropout step time and memory against the patch-grid side (CPU): linear in the patches.

One training-mode ``pb_edropout_2d`` step (defaults: K = 16, 2 sweeps, G = 2)
of one sample with 2 channels at patch size 1, so the grid is side × side
patches (issue 24's setting), and, side by side, the Gibbs sampling alone
(2 sweeps of the K = 16 population) in two implementations of the same
checkerboard sweep:

- ``dense``: the sweep before issue 24 (one batched matmul per colour against
  the dense (n/2 × n/2) colour-to-colour adjacency matrix), copied below,
  run up to ``--dense-max``;
- ``stencil``: today's :func:`energymask.kernels.lattice.site_sweep` (a
  4-neighbour gather per site). Both draw the same uniforms: same masks.

and, with ``--triton``, the peak memory of the same step on the GPU path's
layout (grid order, Triton kernels), run on CPU by the Triton interpreter
(``TRITON_INTERPRET=1``, backend forced to ``"triton"``): every tensor the GPU
path allocates outside its kernels (the lattice, populations, crossover) is
allocated here too; its time is the interpreter's, not reported.

Each (variant, side) runs in its own process; "peak MB" is the growth of the
process's peak resident memory (``ru_maxrss``) during the timed calls, after
the inputs are built and one step on an 8×8 grid has run (imports, interpreter).
Per side: median seconds of ``--repeats`` calls, and the time per patch
(µs / patch), flat when the cost is linear.

    python benchmarks/bench_pbedropout_grid.py [--sides 16 32 64 128 256] [--triton] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _timing import machine, write_json

from energymask.kernels import set_backend
from energymask.kernels.lattice import lattice, site_sweep
from energymask.pbedropout import pb_edropout_2d
from energymask.potts import potts, random_masks

VARIANTS = ("step", "stencil", "dense", "triton")


def dense_sweep(masks, lat, field, beta, temperature, generator, sweeps):  # noqa: ANN001, ANN201
    """The checkerboard sweep before issue 24 (dense adjacency matmul), for comparison."""
    n0 = lat.split
    r0, c0, r1, c1 = lat.rows[:n0], lat.cols[:n0], lat.rows[n0:], lat.cols[n0:]
    adjacency = ((r1[:, None] - r0).abs() + (c1[:, None] - c0).abs() == 1).float()
    k = masks.shape[0]
    drive = (field / -temperature).expand(k, -1, -1)
    drives = drive[..., :n0], drive[..., n0:]
    adjacencies = adjacency.T.expand(k, -1, -1), adjacency.expand(k, -1, -1)
    step = 2.0 * beta / temperature
    colours = list(masks.float().split([n0, masks.shape[-1] - n0], dim=-1))
    for _ in range(sweeps):
        for this, other in ((0, 1), (1, 0)):
            neg_field = torch.baddbmm(drives[this], colours[other], adjacencies[other], alpha=step)
            uniform = torch.rand(neg_field.shape, generator=generator, dtype=neg_field.dtype)
            colours[this] = uniform.lt_(neg_field.sigmoid_())
    return torch.cat(colours, dim=-1).to(torch.uint8)


def run_one(variant: str, side: int, repeats: int) -> dict[str, float]:
    """Time ``repeats`` calls of one variant at one side, in this process."""
    torch.set_num_threads(1)
    if variant == "triton":
        set_backend("triton")  # the GPU path's layout and kernels, in the interpreter
    x = torch.randn(1, 2, side, side, generator=torch.Generator().manual_seed(0)).relu()
    pb_edropout_2d(x[..., :8, :8], p=0.1, patch_size=1)  # warm-up: imports, interpreter
    if variant in ("step", "triton"):
        def call() -> object:
            return pb_edropout_2d(x, p=0.1, patch_size=1, beta=0.5,
                                  generator=torch.Generator().manual_seed(0))
    else:
        model = potts(torch.randn(1, 2, side, side, generator=torch.Generator().manual_seed(1)),
                      0.5, 0.1)
        masks = random_masks((16, 2, side * side), torch.Generator().manual_seed(2))
        sweep = site_sweep if variant == "stencil" else dense_sweep
        lat = model.lattice if variant == "stencil" else lattice(side, side)

        def call() -> object:
            return sweep(masks, lat, model.field, 0.5, 0.1, torch.Generator().manual_seed(3), 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {"seconds": statistics.median(times), "peak_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64, 128, 192, 256])
    parser.add_argument("--dense-max", type=int, default=128, help="largest dense side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--triton", action="store_true",
                        help="also the GPU path's memory, in the Triton interpreter (slow)")
    parser.add_argument("--json", metavar="PATH", default=None)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.repeats)))
        return
    rows = []
    print("| side | patches | step s | step µs/patch | step peak MB | stencil sweep s "
          "| dense sweep s (before) | dense / stencil | stencil peak MB | dense peak MB "
          "| Triton-layout step peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for side in args.sides:
        row: dict[str, object] = {"side": side, "patches": side * side}
        for variant in VARIANTS:
            if (variant == "dense" and side > args.dense_max) or (
                variant == "triton" and not args.triton
            ):
                row[variant] = None
                continue
            env = {**os.environ, "TRITON_INTERPRET": "1"} if variant == "triton" else None
            repeats = 1 if variant == "triton" else args.repeats
            out = subprocess.run([sys.executable, __file__, "--one", variant, str(side),
                                  "--repeats", str(repeats)],
                                 capture_output=True, text=True, check=True, env=env)  # fmt: skip
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        step, stencil, dense = row["step"], row["stencil"], row["dense"]
        dense_s = f"{dense['seconds']:.3f}" if dense else "—"
        ratio = f"{dense['seconds'] / stencil['seconds']:.1f}x" if dense else "—"
        dense_mb = f"{dense['peak_mb']:.0f}" if dense else "—"
        triton_mb = f"{row['triton']['peak_mb']:.0f}" if row["triton"] else "—"
        print(f"| {side} | {side * side} | {step['seconds']:.3f} | "
              f"{1e6 * step['seconds'] / (side * side):.2f} | {step['peak_mb']:.0f} | "
              f"{stencil['seconds']:.3f} | {dense_s} | {ratio} | {stencil['peak_mb']:.0f} | "
              f"{dense_mb} | {triton_mb} |", flush=True)
    write_json(args.json, {"machine": {**machine(), "threads": 1}, "repeats": args.repeats,
                           "rows": rows})


if __name__ == "__main__":
    main()
