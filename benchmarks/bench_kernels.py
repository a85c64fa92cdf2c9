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
   (``energymask.kernels.aot --full``), written to ``benchmarks/kernels_sm90.json``.

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
    "_ersm_fwd_tokens": {
        "reads": ("x_ptr", "w_ptr", "b_ptr"),
        "writes": ("r_ptr", "z_ptr", "keep_ptr", "u_ptr"),
    },
    "_ersm_fwd_pairs": {
        "reads": ("x_ptr", "r_ptr", "keep_ptr"),
        "writes": ("simp_ptr", "out_ptr"),
        "after": ("simp_ptr",),
    },
    "_ersm_bwd_tokens": {
        "reads": ("x_ptr", "go_ptr", "w_ptr", "r_ptr", "z_ptr", "keep_ptr", "gs_ptr", "gsr_ptr",
                  "gz_ptr", "gk_ptr", "gu_ptr"),
        "writes": ("gzt_ptr", "coef_ptr"),
    },
    "_ersm_bwd_dx": {
        "reads": ("x_ptr", "go_ptr", "w_ptr", "r_ptr", "keep_ptr", "gs_ptr", "gsr_ptr", "gzt_ptr",
                  "coef_ptr"),
        "writes": ("dx_ptr", "dw_ptr"),
        "after": ("gzt_ptr", "dw_ptr"),
    },
    "_population_energy": {"reads": ("m_ptr", "u_ptr"), "writes": ("e_ptr",)},
    "_gibbs_sweep": {"reads": ("m_ptr", "u_ptr"), "writes": ("out_ptr",)},
}  # fmt: skip


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


def ersm_traffic(bsz: int, c: int, size: int, dtype: torch.dtype, channels_last: bool = False):
    """Forward, backward and both, ERSM at B, C, size×size, p = 1."""
    from energymask.kernels import ersm_triton
    from energymask.kernels.launch import recording

    meta = {"device": "meta"}
    x = torch.empty(bsz, c, size, size, dtype=dtype, **meta)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.empty(c, **meta), torch.empty((), **meta)
    gpu_tiling, ersm_triton.GPU_TILING = ersm_triton.GPU_TILING, True  # also under --dry-run
    try:
        with recording() as fwd:
            out, z, keep, _, _, r, sim = ersm_triton.forward(x, weight, bias, 1e-3, 1e-3, 1.0)
        with recording() as bwd:
            ersm_triton.backward(x, weight, r, z, keep, sim, out, z, z, z, z, 1e-3, 1e-3, 1.0,
                                 False)  # fmt: skip
    finally:
        ersm_triton.GPU_TILING = gpu_tiling
    tile = fwd[-1].constexprs
    layout = "channels_last" if channels_last else "nchw"
    shape = f"B{bsz} C{c} {size}x{size} {str(dtype)[6:]} {layout}"
    launches = (f"BLOCK_D {tile['BLOCK_D']} BLOCK_S {tile['BLOCK_S']}, "
                f"{fwd[0].grid[0]} / {fwd[-1].grid[0]} programs")  # fmt: skip
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
        rows += ersm_traffic(64, 256, size, torch.bfloat16, channels_last=True)
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


def gbps(minimum_bytes: int, ms: float) -> float:
    return minimum_bytes / (ms * 1e-3) / 1e9


# ERSM shapes (C, map): the four ResNet-50 stages, and the widest map at the most channels.
ERSM_SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7), (2048, 56)]
QUICK_SHAPES = [(256, 14), (256, 56)]
LAYOUTS = (("nchw", torch.float32), ("channels_last", torch.bfloat16))
ERSM_BACKENDS = {"eager": "reference", "compile": "compile", "triton": "triton"}


def ersm_call(x, weight, bias, backend: str, backward: bool) -> Callable[[], object]:
    """One ERSM call through ``energymask.kernels`` forced to ``backend`` (what dispatch runs)."""
    import energymask.kernels as kernels

    def run() -> object:
        with kernels.use_backend(backend):
            res = kernels.ersm_energy(x, weight, bias, 1, 1e-3, 1e-3, 1.0)
        if backward:
            loss = res.output.float().sum() + (res.keep * (res.unary + res.pairwise)).sum()
            loss.backward()
        return res

    return run


def bind(fn: Callable | None, *args) -> Callable[[], object] | None:
    """``fn(*args)`` as a thunk, or None when there is no ``fn``."""
    return None if fn is None else (lambda: fn(*args))


def timings(device: torch.device, shapes, bsz: int, impls: tuple[str, ...], repeats: int,
            peak: float) -> list[dict]:  # fmt: skip
    """ERSM forward and forward+backward per shape and layout, each of ``impls``."""
    from energymask.kernels.dispatch import ERSM_KERNEL_VERSION

    rows: list[dict] = []
    for c, size in shapes:
        for layout, dtype in LAYOUTS:
            for backward in (False, True):
                gen = torch.Generator(device=device).manual_seed(0)
                x = torch.randn(bsz, c, size, size, device=device, generator=gen).to(dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                x.requires_grad_(backward)
                weight = torch.randn(c, device=device, requires_grad=backward)
                bias = torch.tensor(6.0, device=device, requires_grad=backward)
                minimum = nbytes(x) * (5 if backward else 2)
                row: dict = {"kernel": "ersm fwd+bwd" if backward else "ersm fwd",
                             "size": f"B{bsz} C{c} {size}x{size} {str(dtype)[6:]} {layout}",
                             "batch": bsz, "channels": c, "map": size, "layout": layout,
                             "dtype": "half" if dtype != torch.float32 else "float32",
                             "minimum_bytes": minimum,
                             "triton_version": ERSM_KERNEL_VERSION}  # fmt: skip
                record(row, {k: ersm_call(x, weight, bias, ERSM_BACKENDS[k], backward)
                             for k in impls}, device, repeats, peak)  # fmt: skip
                rows.append(row)
    return rows


def record(row: dict, impls: dict, device: torch.device, repeats: int, peak: float) -> None:
    """Time each of ``impls`` into ``row`` (ms, GB/s of the minimum bytes, share of peak)."""
    for label, fn in impls.items():
        if fn is None:
            continue
        try:
            row[f"{label}_ms"] = ms = 1e3 * timed(fn, device, repeats)
        except Exception as exc:  # e.g. no C++ compiler for inductor on CPU
            row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            continue
        row[f"{label}_gbps"] = gbps(row["minimum_bytes"], ms)
        if peak == peak:  # not NaN: a GPU
            row[f"{label}_bandwidth_share"] = row[f"{label}_gbps"] * 1e9 / peak
    for label in ("compile", "triton"):
        if "eager_ms" in row and f"{label}_ms" in row:
            row[f"speedup_{label}_vs_eager"] = row["eager_ms"] / row[f"{label}_ms"]
    if "compile_ms" in row and "triton_ms" in row:
        row["speedup_triton_vs_compile"] = row["compile_ms"] / row["triton_ms"]
    shown = {k: v for k, v in row.items()
             if k.endswith(("_ms", "_share", "_vs_compile")) or k.endswith("_error")}  # fmt: skip
    print(f"{row['kernel']:<18} {row['size']:<40} " + "  ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()),
        flush=True)  # fmt: skip


def potts_timings(device: torch.device, impls: tuple[str, ...], repeats: int, peak: float,
                  cases) -> list[dict]:  # fmt: skip
    """Population energy and one Gibbs half-sweep: eager, compile of the reference, Triton."""
    from energymask.kernels import potts_triton

    fns = {
        "energy": {"eager": ref.population_energy, "compile": torch.compile(ref.population_energy),
                   "triton": potts_triton.population_energy},
        "sweep": {"eager": ref.gibbs_sweep, "compile": torch.compile(ref.gibbs_sweep),
                  "triton": potts_triton.gibbs_sweep},
    }  # fmt: skip
    rows = []
    for k, bsz, c, s in cases:
        masks = (torch.rand(k, bsz, c, s, s, device=device) < 0.5).to(torch.uint8)
        unary = torch.randn(bsz, c, s, s, device=device)
        size = f"K{k} B{bsz} C{c} {s}x{s} uint8"
        energy = {n: bind(fns["energy"][n], masks, unary, 0.5) for n in impls}
        sweep = {n: bind(fns["sweep"][n], masks, unary, 0.5, 1.0, 0, 0) for n in impls}
        for kernel, fn, minimum in (
            ("population energy", energy, nbytes(masks) + nbytes(unary)),
            ("gibbs half-sweep", sweep, 2 * nbytes(masks) + nbytes(unary)),
        ):
            row = {"kernel": kernel, "size": size, "minimum_bytes": minimum}
            record(row, fn, device, repeats, peak)
            rows.append(row)
    return rows


# ---- the training step ----------------------------------------------------------------


def training_step(device: torch.device, layer: str, backend: str | None, bsz: int, size: int,
                  steps: int) -> float:  # fmt: skip
    """Median ms of a torchvision ResNet-50 step (bf16 autocast on CUDA, channels-last, AdamW)
    with ERSM after ``layer`` through ``backend`` (None: the plain model)."""
    import torchvision

    import energymask.kernels as kernels
    from energymask import EnergyMask2d, collect_regularizer, insert_after

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    if backend is not None:
        insert_after(model, layer, lambda name, c: EnergyMask2d(c, bias_init=0.0))
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(bsz, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (bsz,), device=device)
    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    times = []
    with kernels.use_backend(backend or "reference"):
        for _ in range(steps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, half, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                if backend is not None:
                    loss = loss + collect_regularizer(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 1e3 * sorted(times[3:])[steps // 2]


def step_rows(device: torch.device, impls: tuple[str, ...], bsz: int, size: int, steps: int):
    """ResNet-50 + ERSM after layer2/3/4: plain vs each backend, and auto (the dispatch)."""
    rows = []
    for layer in ("layer2", "layer3", "layer4"):
        row: dict = {"kernel": "resnet50 step", "layer": layer, "batch": bsz, "image": size}
        row["plain_ms"] = training_step(device, layer, None, bsz, size, steps)
        for label in (*impls, "auto"):
            backend = ERSM_BACKENDS.get(label, label)
            try:
                ms = training_step(device, layer, backend, bsz, size, steps)
            except Exception as exc:
                row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                continue
            row[f"{label}_ms"], row[f"{label}_vs_plain"] = ms, ms / row["plain_ms"]
        shown = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in row.items() if k.endswith(("_ms", "_plain", "_error"))]  # fmt: skip
        print(f"resnet50 step, ERSM after {layer}: " + "  ".join(shown), flush=True)
        rows.append(row)
    return rows


# ---- the dispatch table ----------------------------------------------------------------


def table_rows(result: dict, kernel_version: str | None = None) -> list[dict]:
    """The ERSM rows of a result of this script as dispatch-table rows.

    ``kernel_version`` overrides the rows' ``triton_version`` (for results of
    versions of this script that did not record it, e.g. the H200 run of v1).
    Old results without a layout were NCHW float32: "B64 C256 7x7".
    """
    rows = []
    for r in result["rows"]:
        if not r["kernel"].startswith("ersm"):
            continue
        if "channels" in r:
            shape = {k: r[k] for k in ("batch", "channels", "map", "layout", "dtype")}
        else:
            b, c, hw = r["size"].split()[:3]
            shape = {"batch": int(b[1:]), "channels": int(c[1:]), "map": int(hw.split("x")[0]),
                     "layout": "nchw", "dtype": "float32"}  # fmt: skip
        times = {k: r[k] for k in ("eager_ms", "compile_ms", "triton_ms") if k in r}
        version = kernel_version or r.get("triton_version")
        rows.append({"kernel": r["kernel"], "device": result["device_name"], **shape, **times,
                     "triton_version": version})  # fmt: skip
    return rows


def write_table(path: Path, rows: list[dict], source: str) -> None:
    """Replace the rows of these devices in the table at ``path`` (created if absent)."""
    from energymask.kernels.dispatch import fastest

    table = json.loads(path.read_text()) if path.exists() else {"sources": [], "rows": []}
    devices = {r["device"] for r in rows}
    table["rows"] = [r for r in table["rows"] if r["device"] not in devices]
    table["rows"] += [{**r, "choice": fastest(r)} for r in rows]
    table["sources"] = [s for s in table["sources"] if s["device"] not in devices]
    table["sources"] += [{"device": d, "source": source} for d in sorted(devices)]
    path.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {path}: {len(rows)} rows for {sorted(devices)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("none", "auto", "cpu", "cuda"),
        default="auto",
        help="time on this device (auto: cuda if present, else cpu "
        "reference only; none: traffic table only)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--step",
        action="store_true",
        help="also the ResNet-50 training step with ERSM after layer2/3/4",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU smoke run of every part at tiny shapes, Triton in the "
        "interpreter (checks the script, measures nothing)",
    )
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    parser.add_argument(
        "--table",
        type=str,
        default=None,
        help="write the ERSM rows into this dispatch table "
        "(kernels/dispatch_table.json ships with the package)",
    )
    parser.add_argument(
        "--table-from",
        type=str,
        default=None,
        help="only convert this earlier --json result into --table rows",
    )
    parser.add_argument(
        "--kernel-version",
        type=str,
        default=None,
        help="with --table-from: the Triton kernel version it measured",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile every kernel for sm_90 at the full grid of shapes "
        "(registers, spills, shared) into benchmarks/kernels_sm90.json",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.compile:
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        out = str(HERE / "kernels_sm90.json")
        cmd = [sys.executable, "-m", "energymask.kernels.aot", "--full", "--cc", "90"]
        cmd += ["--json", out]
        raise SystemExit(subprocess.run(cmd, env=env, check=False).returncode)
    if args.table_from:
        if not args.table:
            parser.error("--table-from needs --table PATH")
        result = json.loads(Path(args.table_from).read_text())
        write_table(Path(args.table), table_rows(result, args.kernel_version), args.table_from)
        return
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.device = "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA device here. The Triton kernels are timed only "
            "on a GPU (the CPU interpreter is a correctness tool, not a speed one)."
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    print("traffic model (bytes moved / minimum):")
    result: dict = {"traffic": traffic_table(), "rows": []}
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    impls = ("eager",) + (() if args.no_compile else ("compile",))
    impls += ("triton",) if on_gpu or args.dry_run else ()
    if device != "none":
        dev = torch.device(device)
        peak = copy_bandwidth(dev) if on_gpu else float("nan")
        if on_gpu:
            print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {peak / 1e9:.0f} GB/s")
            result.update(device_name=torch.cuda.get_device_name(), copy_gbps=peak / 1e9)
        else:
            cpu = platform.processor() or platform.machine()
            print(
                f"device: CPU ({cpu}, {torch.get_num_threads()} threads); NO GPU: "
                + (
                    "dry run, interpreter, nothing measured"
                    if args.dry_run
                    else "Triton kernels not timed, reference only (eager vs compile)"
                )
            )
            result.update(device_name="cpu")
        repeats = 2 if args.dry_run else 10 if args.quick else 20
        if args.dry_run:
            shapes, bsz, potts = [(8, 4), (16, 5)], 2, [(2, 2, 3, 4)]
        elif on_gpu:
            shapes, bsz, potts = (QUICK_SHAPES if args.quick else ERSM_SHAPES), 64, [
                (8, 64, 256, 14), (32, 64, 64, 16)]  # fmt: skip
        else:
            shapes, bsz, potts = [(64, 7), (256, 14)], 8, [(8, 8, 16, 8)]
        result["rows"] = timings(dev, shapes, bsz, impls, repeats, peak)
        result["rows"] += potts_timings(dev, impls, repeats, peak, potts)
        if args.step:
            step = (2, 32, 1) if args.dry_run else (64, 224, 10) if on_gpu else (8, 64, 3)
            result["step"] = step_rows(dev, impls, *step)
    result.update(device=device, gpu=on_gpu, quick=args.quick, dry_run=args.dry_run,
                  elapsed_s=time.perf_counter() - started)  # fmt: skip
    print(f"elapsed {result['elapsed_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.table and device != "none":
        command = " ".join(sys.argv[1:] if argv is None else argv)
        write_table(Path(args.table), table_rows(result), f"bench_kernels.py {command}")


if __name__ == "__main__":
    main()
