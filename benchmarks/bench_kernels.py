"""Energy kernels: fused Triton vs eager PyTorch reference vs torch.compile(reference).

Measures, side by side in one run (machines are noisy, so only ratios within a
run are compared):
- ERSM token energy (DESIGN.md §3), forward and forward+backward;
- PB-EDropout population energy and one checkerboard Gibbs half-sweep (§4).

On a GPU it also prints the achieved memory bandwidth as a fraction of the
measured device-to-device copy bandwidth (the practical peak). Without a GPU
only the reference figures (eager, compiled) are measured, and the script says
so: the Triton interpreter on CPU is a correctness tool, not a speed one.

Usage::

    python benchmarks/bench_kernels.py --quick --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from energymask.kernels import reference as ref


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best-of-``repeats`` seconds per call after three warm-up calls (compilation).

    The minimum, not the median: on shared machines other processes only ever
    add time, so the minimum is the least disturbed figure.
    """
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the practical peak."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 20)
    return 2 * src.numel() / seconds


def ersm_cases(quick: bool, on_gpu: bool) -> list[tuple[int, int, int]]:
    if on_gpu and not quick:
        return [(64, c, s) for c in (256, 512, 1024, 2048) for s in (7, 14, 28, 56)]
    if on_gpu:
        return [(64, 256, 14), (64, 2048, 7)]
    return [(8, 64, 7), (8, 256, 14)]


def potts_cases(quick: bool, on_gpu: bool) -> list[tuple[int, int, int, int]]:
    if on_gpu and not quick:
        return [(k, 64, 64, 8) for k in (8, 16, 32)] + [(16, 64, 64, 16)]
    if on_gpu:
        return [(8, 64, 64, 8), (32, 64, 64, 8)]
    return [(8, 8, 16, 8), (32, 8, 16, 8)]


def make_ersm(bsz: int, c: int, s: int, device: torch.device, backward: bool) -> Callable:
    def step(fn: Callable) -> Callable[[], object]:
        x = torch.randn(bsz, c, s, s, device=device, requires_grad=backward)
        weight = torch.randn(c, device=device, requires_grad=backward)
        bias = torch.tensor(6.0, device=device, requires_grad=backward)

        def run() -> object:
            res = fn(x, weight, bias, 1, 1e-3, 1e-3, 1.0)
            if backward:
                loss = res.output.sum() + (res.keep * (res.unary + res.pairwise)).sum()
                loss.backward()
            return res

        return run

    return step


def ersm_bytes(bsz: int, c: int, s: int, backward: bool) -> int:
    """Minimal traffic in float32: read x, write out (+ read x, grad out, write dx)."""
    plane = bsz * c * s * s * 4
    return plane * (5 if backward else 2)


def potts_impls(
    masks: torch.Tensor, unary: torch.Tensor, energy_fn: Callable | None, field_fn: Callable | None
) -> tuple[dict, dict]:
    """Callables for population energy and a Gibbs half-sweep: eager, compiled, Triton."""
    on_gpu = masks.is_cuda
    if on_gpu:
        from energymask.kernels import potts_triton
    site = ref.checkerboard(masks.shape[-2], masks.shape[-1], 0, masks.device)

    def compiled_sweep() -> torch.Tensor:  # compiled conditional field + the same sampling
        field = field_fn(masks, unary, 0.5)
        keep = torch.rand_like(field) < torch.sigmoid(-field)
        return torch.where(site, keep.float(), masks)

    energy = {
        "eager": lambda: ref.population_energy(masks, unary, 0.5),
        "compile": (lambda: energy_fn(masks, unary, 0.5)) if energy_fn else None,
        "triton": (lambda: potts_triton.population_energy(masks, unary, 0.5)) if on_gpu else None,
    }
    sweep = {
        "eager": lambda: ref.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 0),
        "compile": compiled_sweep if field_fn else None,
        "triton": (lambda: potts_triton.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 0))
        if on_gpu
        else None,
    }
    return energy, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    repeats = 10 if args.quick else 30
    if on_gpu:
        from energymask.kernels import ersm_triton

        name = torch.cuda.get_device_name()
        peak = copy_bandwidth(device)
        print(f"device: {name}; copy bandwidth {peak / 1e9:.0f} GB/s (used as peak)")
    else:
        cpu = platform.processor() or platform.machine()
        name = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
        peak = float("nan")
        print(f"device: {name}")
        print("NO GPU PRESENT: Triton kernels not timed; reference only (eager vs compile).")
    compiled_ersm = None if args.no_compile else torch.compile(ref.ersm_energy)
    compiled_energy = None if args.no_compile else torch.compile(ref.population_energy)
    compiled_field = None if args.no_compile else torch.compile(ref.conditional_field)

    rows: list[dict] = []

    def record(kernel: str, size: str, impls: dict[str, Callable | None], traffic: int) -> None:
        row: dict = {"kernel": kernel, "size": size}
        for label, fn in impls.items():
            if fn is None:
                continue
            try:
                row[f"{label}_ms"] = 1e3 * timed(fn, device, repeats)
            except Exception as exc:  # e.g. no C++ compiler for inductor on CPU
                row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
        eager = row.get("eager_ms")
        for label in ("compile", "triton"):
            if eager and f"{label}_ms" in row:
                row[f"speedup_{label}_vs_eager"] = eager / row[f"{label}_ms"]
        if "triton_ms" in row:
            row["triton_bw_fraction"] = traffic / (row["triton_ms"] * 1e-3) / peak
        rows.append(row)
        figures = "  ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k not in ("kernel", "size")
        )
        print(f"{kernel:<22} {size:<18} {figures}")

    for bsz, c, s in ersm_cases(args.quick, on_gpu):
        for backward in (False, True):
            step = make_ersm(bsz, c, s, device, backward)
            impls = {
                "eager": step(ref.ersm_energy),
                "compile": step(compiled_ersm) if compiled_ersm else None,
                "triton": step(ersm_triton.ersm_energy) if on_gpu else None,
            }
            kind = "ersm fwd+bwd" if backward else "ersm fwd"
            record(kind, f"B{bsz} C{c} {s}x{s}", impls, ersm_bytes(bsz, c, s, backward))

    for k, bsz, c, s in potts_cases(args.quick, on_gpu):
        masks = (torch.rand(k, bsz, c, s, s, device=device) < 0.5).float()
        unary = torch.randn(bsz, c, s, s, device=device)
        size = f"K{k} B{bsz} C{c} {s}x{s}"
        plane = masks.numel() * 4
        energy_impls, sweep_impls = potts_impls(masks, unary, compiled_energy, compiled_field)
        record("population energy", size, energy_impls, plane + unary.numel() * 4)
        record("gibbs half-sweep", size, sweep_impls, 2 * plane + unary.numel() * 4)

    if args.json:
        with open(args.json, "w") as f:
            result = {"device": name, "gpu": on_gpu, "quick": args.quick, "rows": rows}
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
