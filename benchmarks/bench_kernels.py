"""Energy kernels: memory traffic model, and Triton vs eager vs torch.compile timings.

1. Traffic model (always printed, no GPU needed). The launches of the Triton
   wrappers are recorded on ``meta`` tensors (``energymask.kernels.launch``),
   so the block sizes and tensors are those a GPU run uses. Model: every
   tensor a kernel touches moves once per launch (bytes = numel · element
   size) between memory and the GPU; re-reads within a launch (the 8
   neighbour tiles, a program's second pass over its own tile) come from
   cache: the working set of all resident programs (132 SMs × a few programs ×
   BLOCK_S tokens × D channels) is far below an H100's 50 MB L2. The minimum:
   ERSM forward reads x and writes out; backward reads x and g_out and writes
   dx; a Gibbs sweep (both colours) reads the masks and the unary energies and
   writes the masks; the population energy reads masks and unary energies.
2. Timings (``--device cuda``): eager reference, ``torch.compile`` of it and the
   Triton kernels side by side, best of N after warm-up, and the Triton
   kernels' achieved bandwidth (minimum bytes / time) as a share of the
   measured device-to-device copy bandwidth. ``--device cpu`` times only the
   reference (eager vs compile); the Triton interpreter is not timed. With
   ``--device cuda`` and no GPU the script refuses.
3. ``--compile``: the ahead-of-time compile grid of every kernel
   (``energymask.kernels.aot --full``), written to ``benchmarks/results/kernels_sm90.json``.

Usage::

    python benchmarks/bench_kernels.py                      # traffic table
    python benchmarks/bench_kernels.py --device cuda --json benchmarks/kernels_h100.json
    python benchmarks/bench_kernels.py --compile            # registers, spills, shared
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from energymask.kernels import reference as ref

HERE = Path(__file__).resolve().parent

# What each kernel reads and writes, by argument name (``go_ptr`` only with HAS_GO);
# ``after``: tensors the wrapper then reads in torch (the dw and db sums).
KERNEL_IO = {
    "_ersm_fwd": {
        "reads": ("x_ptr", "w_ptr", "b_ptr"),
        "writes": ("r_ptr", "z_ptr", "keep_ptr", "u_ptr", "sim_ptr", "p_ptr", "out_ptr"),
    },
    "_ersm_bwd": {
        "reads": ("x_ptr", "go_ptr", "w_ptr", "r_ptr", "z_ptr", "keep_ptr", "sim_ptr",
                  "gz_ptr", "gk_ptr", "gu_ptr", "gp_ptr"),
        "writes": ("gzt_ptr", "dx_ptr", "dw_ptr"),
        "after": ("gzt_ptr", "dw_ptr"),
    },  # fmt: skip
    "_population_energy": {"reads": ("m_ptr", "u_ptr"), "writes": ("e_ptr",)},
    "_gibbs_sweep": {"reads": ("m_ptr", "u_ptr"), "writes": ("out_ptr",)},
}


def launch_bytes(item) -> int:
    """Bytes one recorded launch moves under the model (see the module docstring)."""
    io = KERNEL_IO[item.kernel.__name__]
    args = dict(zip(item.kernel.arg_names, item.args, strict=False))
    if not item.constexprs.get("HAS_GO", True):
        args.pop("go_ptr")
    names = [n for n in (*io["reads"], *io["writes"], *io.get("after", ())) if n in args]
    return sum(args[n].numel() * args[n].element_size() for n in names)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def ersm_traffic(bsz: int, c: int, size: int, dtype: torch.dtype) -> list[dict]:
    """Forward, backward and both, ERSM at B, C, size×size, p = 1."""
    from energymask.kernels import ersm_triton
    from energymask.kernels.launch import recording

    meta = {"device": "meta"}
    x = torch.empty(bsz, c, size, size, dtype=dtype, **meta)
    weight, bias = torch.empty(c, **meta), torch.empty((), **meta)
    with recording() as fwd:
        out, z, keep, _, _, r, sim = ersm_triton.forward(x, weight, bias, 1e-3, 1e-3, 1.0)
    with recording() as bwd:
        ersm_triton.backward(x, weight, r, z, keep, sim, out, z, z, z, z, 1e-3, 1e-3, 1.0, False)
    tile = fwd[0].constexprs
    shape = f"B{bsz} C{c} {size}x{size} {str(dtype)[6:]}"
    launches = f"BLOCK_D {tile['BLOCK_D']} BLOCK_S {tile['BLOCK_S']}, {fwd[0].grid} programs"
    rows = []
    for what, items, minimum in (
        ("ersm forward", fwd, 2 * nbytes(x)),
        ("ersm backward", bwd, 3 * nbytes(x)),
        ("ersm forward+backward", fwd + bwd, 5 * nbytes(x)),
    ):
        moved = sum(launch_bytes(i) for i in items)
        rows.append({"kernel": what, "size": shape, "launch": launches, "bytes": moved,
                     "minimum_bytes": minimum, "ratio": moved / minimum})  # fmt: skip
    return rows


def potts_traffic(k: int, bsz: int, c: int, size: int) -> list[dict]:
    """One Gibbs sweep (both colours) and one population energy on uint8 masks."""
    from energymask.kernels import potts_triton
    from energymask.kernels.launch import recording

    meta = {"device": "meta"}
    masks = torch.empty(k, bsz, c, size, size, dtype=torch.uint8, **meta)
    unary = torch.empty(bsz, c, size, size, **meta)
    with recording() as sweep:
        for parity in (0, 1):
            potts_triton.sweep_launch(masks, unary, 0.5, 1.0, parity, 0)
    with recording() as energy:
        potts_triton.energy_launch(masks, unary, 0.5)
    shape = f"K{k} B{bsz} C{c} {size}x{size} uint8"
    rows = []
    for what, items, minimum in (
        ("gibbs sweep (2 colours)", sweep, 2 * nbytes(masks) + nbytes(unary)),
        ("population energy", energy, nbytes(masks) + nbytes(unary) + 4 * k * bsz * c),
    ):
        moved = sum(launch_bytes(i) for i in items)
        tile = items[0].constexprs
        launches = f"BLOCK_P {tile['BLOCK_P']} BLOCK {tile['BLOCK']}, {items[0].grid} programs"
        rows.append({"kernel": what, "size": shape, "launch": launches, "bytes": moved,
                     "minimum_bytes": minimum, "ratio": moved / minimum})  # fmt: skip
    return rows


def traffic_table() -> list[dict]:
    rows = []
    for size in (14, 56):
        rows += ersm_traffic(64, 256, size, torch.float32)
        rows += ersm_traffic(64, 256, size, torch.bfloat16)
        rows += potts_traffic(8, 64, 256, size)
    for row in rows:
        print(f"{row['kernel']:<24} {row['size']:<24} {row['bytes'] / 2**20:9.1f} MiB "
              f"min {row['minimum_bytes'] / 2**20:9.1f} MiB  x{row['ratio']:.3f}  "
              f"({row['launch']})")  # fmt: skip
    return rows


# ---- timings -------------------------------------------------------------------------


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best-of-``repeats`` seconds per call after three warm-up calls (compilation)."""
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
    return 2 * src.numel() / timed(lambda: dst.copy_(src), device, 20)


def ersm_step(fn: Callable, x, weight, bias, backward: bool) -> Callable[[], object]:
    def run() -> object:
        res = fn(x, weight, bias, 1, 1e-3, 1e-3, 1.0)
        if backward:
            loss = res.output.float().sum() + (res.keep * (res.unary + res.pairwise)).sum()
            loss.backward()
        return res

    return run


def bind(fn: Callable | None, *args) -> Callable[[], object] | None:
    """``fn(*args)`` as a thunk, or None when there is no ``fn``."""
    return None if fn is None else (lambda: fn(*args))


def timings(device: torch.device, quick: bool, compile_ref: bool) -> list[dict]:
    on_gpu = device.type == "cuda"
    repeats = 10 if quick else 30
    peak = copy_bandwidth(device) if on_gpu else float("nan")
    if on_gpu:
        from energymask.kernels import ersm_triton, potts_triton

        print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {peak / 1e9:.0f} GB/s")
    compiled = {
        name: torch.compile(fn) if compile_ref else None
        for name, fn in (("ersm", ref.ersm_energy), ("energy", ref.population_energy),
                         ("sweep", ref.gibbs_sweep))
    }  # fmt: skip
    rows: list[dict] = []

    def record(kernel: str, size: str, impls: dict, minimum: int) -> None:
        row: dict = {"kernel": kernel, "size": size}
        for label, fn in impls.items():
            if fn is None:
                continue
            try:
                row[f"{label}_ms"] = 1e3 * timed(fn, device, repeats)
            except Exception as exc:  # e.g. no C++ compiler for inductor on CPU
                row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
        for label in ("compile", "triton"):
            if "eager_ms" in row and f"{label}_ms" in row:
                row[f"speedup_{label}_vs_eager"] = row["eager_ms"] / row[f"{label}_ms"]
        if "triton_ms" in row:
            row["triton_bandwidth_share"] = minimum / (row["triton_ms"] * 1e-3) / peak
        rows.append(row)
        print(f"{kernel:<22} {size:<22} " + "  ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items() if k not in ("kernel", "size")))  # fmt: skip

    cases = [(64, 256, 14), (64, 256, 56)] if quick or not on_gpu else [
        (64, c, s) for c in (256, 1024, 2048) for s in (7, 14, 28, 56)]  # fmt: skip
    if not on_gpu:
        cases = [(8, 64, 7), (8, 256, 14)]
    for bsz, c, s in cases:
        for backward in (False, True):
            x = torch.randn(bsz, c, s, s, device=device, requires_grad=backward)
            weight = torch.randn(c, device=device, requires_grad=backward)
            bias = torch.tensor(6.0, device=device, requires_grad=backward)
            impls = {
                "eager": ersm_step(ref.ersm_energy, x, weight, bias, backward),
                "compile": ersm_step(compiled["ersm"], x, weight, bias, backward)
                if compiled["ersm"] else None,
                "triton": ersm_step(ersm_triton.ersm_energy, x, weight, bias, backward)
                if on_gpu else None,
            }  # fmt: skip
            kind = "ersm fwd+bwd" if backward else "ersm fwd"
            record(kind, f"B{bsz} C{c} {s}x{s}", impls, nbytes(x) * (5 if backward else 2))
    for k, bsz, c, s in [(8, 64, 256, 14), (32, 64, 64, 16)] if on_gpu else [(8, 8, 16, 8)]:
        masks = (torch.rand(k, bsz, c, s, s, device=device) < 0.5).to(torch.uint8)
        unary = torch.randn(bsz, c, s, s, device=device)
        size = f"K{k} B{bsz} C{c} {s}x{s} uint8"
        triton_energy = potts_triton.population_energy if on_gpu else None
        triton_sweep = potts_triton.gibbs_sweep if on_gpu else None
        energy = {label: bind(fn, masks, unary, 0.5) for label, fn in (
            ("eager", ref.population_energy), ("compile", compiled["energy"]),
            ("triton", triton_energy))}  # fmt: skip
        sweep = {label: bind(fn, masks, unary, 0.5, 1.0, 0, 0) for label, fn in (
            ("eager", ref.gibbs_sweep), ("compile", compiled["sweep"]),
            ("triton", triton_sweep))}  # fmt: skip
        record("population energy", size, energy, nbytes(masks) + nbytes(unary))
        record("gibbs half-sweep", size, sweep, 2 * nbytes(masks) + nbytes(unary))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("none", "auto", "cpu", "cuda"), default="auto",
                        help="time on this device (auto: cuda if present, else cpu "
                             "reference only; none: traffic table only)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--compile", action="store_true",
                        help="compile every kernel for sm_90 at the full grid of shapes "
                             "(registers, spills, shared) into "
                             "benchmarks/results/kernels_sm90.json")
    args = parser.parse_args()  # fmt: skip
    if args.compile:
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        out = str(HERE / "results" / "kernels_sm90.json")
        cmd = [sys.executable, "-m", "energymask.kernels.aot", "--full", "--cc", "90"]
        cmd += ["--json", out]
        raise SystemExit(subprocess.run(cmd, env=env, check=False).returncode)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here. The Triton kernels are timed only "
                     "on a GPU (the CPU interpreter is a correctness tool, not a speed one).")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("traffic model (bytes moved / minimum):")
    result: dict = {"traffic": traffic_table(), "rows": []}
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "none":
        if device == "cpu":
            cpu = platform.processor() or platform.machine()
            print(f"device: CPU ({cpu}, {torch.get_num_threads()} threads); "
                  "NO GPU: Triton kernels not timed, reference only (eager vs compile)")
        result["rows"] = timings(torch.device(device), args.quick, not args.no_compile)
    result.update(device=device, gpu=device == "cuda", quick=args.quick)
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
