"""Ahead-of-time compile check of every Triton kernel, without a GPU.

The launches are recorded from the real wrappers (:mod:`energymask.kernels.launch`)
on ``meta`` tensors of realistic shapes, so the block sizes, flags and dtypes
compiled are the ones a GPU run would pick. Each distinct launch is compiled
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and
the ptxas bundled with Triton (in a fresh cache, so ptxas always runs);
registers, spill stores and stack frame come from ptxas' ``-v`` report,
shared memory from the kernel's metadata.

Must run with ``TRITON_INTERPRET=0`` (the interpreter replaces the kernels by
Python functions that cannot be compiled); ``tests/kernels/test_kernels_compile.py``
and ``benchmarks/bench_kernels.py --compile`` call :func:`main` in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import NamedTuple

import torch

from .launch import MAX_REGISTERS, Launch, recording

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_POINTER = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float64: "*fp64",
    torch.uint8: "*u8",
    torch.int64: "*i64",
}


class Case(NamedTuple):
    """One realistic call: ``kind`` ("ersm", "potts" or "sparse"), its shape, dtype name
    and, for ERSM, the layouts recorded ("nchw", "channels_last" or "both")."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    layout: str = "both"


def cases(full: bool) -> Iterator[Case]:
    """ERSM: B = 64, C 64..2048, maps 7..56, p 1 and 2. Potts: grids 4..128, K up to 32.

    ``full=False`` is the representative subset run by the test suite: per
    dtype, ERSM many channels at 7x7 in channels-last (5 channel splits) and a
    wide map in NCHW (128-token rows), and the two Potts tiles (small grids:
    many planes per program; 128x128: chunks of 1024 sites). Sparse rows (gather / scatter,
    fixed tiles): (N, C) = 9·1568 taps of 256 channels.
    """
    for dtype in DTYPES:
        yield Case("sparse", (9 * 1568, 256), dtype)
    if not full:
        for dtype in DTYPES:
            yield Case("ersm", (64, 2048, 7, 7, 1), dtype, "channels_last")
            yield Case("ersm", (64, 256, 56, 56, 2), dtype, "nchw")
            yield Case("potts", (32, 8, 64, 8, 8), dtype)
            yield Case("potts", (32, 8, 64, 128, 128), dtype)
        return
    for dtype in DTYPES:
        for c in (64, 256, 512, 1024, 2048):
            for size in (7, 14, 28, 56):
                for p in (1, 2):
                    h = size - size % p  # 7x7 with p = 2: the 6x6 crop
                    yield Case("ersm", (64, c, h, h, p), dtype)
        for k in (1, 8, 32):
            for g in (4, 8, 16, 32, 64, 128):
                yield Case("potts", (k, 8, 64, g, g), dtype)


def record(case: Case, full: bool = True) -> list[Launch]:
    """The launches the wrappers make for ``case`` (forward and backward; ERSM in NCHW and
    channels-last).

    ``full``: every flag (scalar and per-position bias, with and without
    g_out; uint8 and float32 masks); otherwise the heavier of each.
    """
    from . import ersm_triton, potts_triton, sparse_triton

    dtype = DTYPES[case.dtype]
    meta = {"device": "meta"}
    with recording() as launches:
        if case.kind == "ersm":
            bsz, c, h, w, p = case.shape
            nchw = torch.empty(bsz, c * p * p, h // p, w // p, dtype=dtype, **meta)
            weight = torch.empty(c * p * p, **meta)
            tokens = torch.empty(bsz, h // p, w // p, **meta)
            layouts = {"nchw": nchw, "channels_last": nchw.to(memory_format=torch.channels_last)}
            for name, x in layouts.items():
                if case.layout not in ("both", name):
                    continue
                for bias in (tokens[0], torch.empty((), **meta))[: 2 if full else 1]:
                    out, z, keep, _, _, r, sim = ersm_triton.forward(x, weight, bias, 1e-3, 1e-3,
                                                                     1.0)  # fmt: skip
                    for g_out in (out, None)[: 2 if full else 1]:
                        ersm_triton.backward(x, weight, r, z, keep, sim, g_out, z, z, z, z,
                                             1e-3, 1e-3, 1.0, bias.dim() > 0)  # fmt: skip
        elif case.kind == "sparse":
            n, c = case.shape
            rows = torch.empty(2 * n, c, dtype=dtype, **meta)
            idx = torch.empty(n, dtype=torch.int64, **meta)
            sparse_triton.scatter_rows(rows, idx, sparse_triton.gather_rows(rows, idx))
        else:
            k, b, c, h, w = case.shape
            unary = torch.empty(b, c, h, w, dtype=dtype, **meta)
            for mask_dtype in (torch.uint8, torch.float32)[: 2 if full else 1]:
                masks = torch.empty(k, b, c, h, w, dtype=mask_dtype, **meta)
                potts_triton.energy_launch(masks, unary, 0.5)
                potts_triton.sweep_launch(masks, unary, 0.5, 1.0, 1, 12345)
    return launches


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    return "fp32"


def signature(item: Launch) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a recorded launch, as the JIT would build them."""
    names = item.kernel.arg_names
    sig, attrs, constexprs = {}, {}, dict(item.constexprs)
    for i, (name, value) in enumerate(zip(names, item.args, strict=False)):
        if type(value) is int and value == 1:  # the JIT specialises 1 (a unit stride) too
            sig[name], constexprs[name] = "constexpr", 1
            continue
        sig[name] = _arg_type(value)
        if isinstance(value, torch.Tensor) or (
            isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0
        ):
            attrs[(i,)] = [["tt.divisibility", 16]]
    for name in names[len(item.args) :]:
        sig[name] = "constexpr"
    return sig, constexprs, attrs


def key(item: Launch) -> str:
    """What makes two launches compile to the same code (alignment hints aside)."""
    sig, constexprs, _ = signature(item)
    return f"{item.kernel.__name__} {sig} {constexprs} warps={item.num_warps}"


def resources(ptxas_log: str) -> dict[str, int]:
    """Registers, spill stores and stack frame bytes from ptxas' ``-v`` report."""

    def number(pattern: str) -> int:
        found = re.search(pattern, ptxas_log)
        return int(found.group(1)) if found else 0

    if "Used" not in ptxas_log:
        raise RuntimeError(f"no ptxas report (cached binary?): {ptxas_log[-300:]!r}")
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_bytes": number(r"(\d+) bytes spill stores"),
        "stack_bytes": number(r"(\d+) bytes stack frame"),
    }


def compile_one(item: Launch, cc: int) -> dict:
    """Compile one launch for compute capability ``cc``; a row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs = signature(item)
    shown = {k: getattr(v, "name", v) for k, v in constexprs.items()}
    row = {"kernel": item.kernel.__name__, "cc": cc, "num_warps": item.num_warps, **shown,
           "pointers": sorted({t for t in sig.values() if t.startswith("*")})}  # fmt: skip
    try:
        src = ASTSource(fn=item.kernel, signature=sig, constexprs=constexprs, attrs=attrs)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # ptxas' -v report, printed by Triton
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", cc, 32),
                options={"num_warps": item.num_warps, "maxnreg": MAX_REGISTERS},
            )
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[-400:]}"
        return row
    row.update(resources(log.getvalue()), shared_bytes=compiled.metadata.shared)
    return row


def unique_launches(full: bool) -> dict[str, tuple[Launch, list[str]]]:
    """Distinct launches over :func:`cases`, with the cases that make each."""
    found: dict[str, tuple[Launch, list[str]]] = {}
    for case in cases(full):
        for item in record(case, full):
            label = f"{case.kind} {case.shape} {case.dtype}"
            found.setdefault(key(item), (item, []))[1].append(label)
    return found


def _compile_indexed(task: tuple[bool, int, int]) -> dict:
    full, index, cc = task
    item, labels = list(unique_launches(full).values())[index]
    return {**compile_one(item, cc), "cases": len(labels), "example": labels[0]}


def main(argv: list[str] | None = None) -> int:
    """Compile the launches; print one line each; exit 1 on an error or a spill."""
    parser = argparse.ArgumentParser(description="Compile every Triton kernel ahead of time.")
    parser.add_argument("--full", action="store_true", help="the whole grid of shapes")
    parser.add_argument("--cc", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("aot: run with TRITON_INTERPRET=0 (the interpreter cannot compile)")
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="energymask-aot-")
    count = len(unique_launches(args.full))
    tasks = [(args.full, i, cc) for i in range(count) for cc in args.cc]
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(_compile_indexed, tasks):
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "pointers"}), flush=True)
    bad = [r for r in rows if "error" in r or r["spill_bytes"] > 0]
    ok = [r for r in rows if "error" not in r]
    print(
        f"aot: {len(rows)} compiles ({count} distinct launches x cc {args.cc}); "
        f"max registers {max((r['registers'] for r in ok), default=0)}; "
        f"max spill bytes {max((r['spill_bytes'] for r in ok), default=0)}; "
        f"with spills or errors: {len(bad)}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cc": args.cc, "full": args.full, "rows": rows}, f, indent=1)
    return 1 if bad else 0


__all__ = ["main", "signature"]


if __name__ == "__main__":
    sys.exit(main())
