"""Every Triton kernel compiles for sm_80 and sm_90, without spills (no GPU needed).

The interpreter (set by conftest) hides compile errors, so the check runs
:mod:`energymask.kernels.aot` in a subprocess with ``TRITON_INTERPRET=0``: it
records the launches the wrappers make for realistic shapes, compiles each
distinct one with Triton's own compiler and bundled ptxas, and fails on an
error or a spill. Here the representative subset; the full grid is written by
``benchmarks/bench_kernels.py --compile`` to ``benchmarks/results/kernels_sm90.json``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
aot = pytest.importorskip("energymask.kernels.aot")

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
needs_ptxas = pytest.mark.skipif(
    not os.path.exists(os.path.join(BIN, "ptxas")), reason="Triton without its NVIDIA backend"
)


@needs_ptxas
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "aot.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "energymask.kernels.aot", "--cc", "80", "90", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    print(done.stdout.splitlines()[-1] if done.stdout else done.stderr[-2000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kernels = {"_ersm_fwd_tokens", "_ersm_fwd_pairs", "_ersm_bwd_tokens", "_ersm_bwd_dx",
               "_population_energy", "_gibbs_sweep"}  # fmt: skip
    kernels |= {"_gather_rows", "_scatter_rows"}  # kernels/sparse_triton.py
    assert {r["kernel"] for r in rows} == kernels
    for kernel in kernels:
        for cc in (80, 90):
            pointers = set().union(*(r["pointers"] for r in rows
                                     if r["kernel"] == kernel and r["cc"] == cc))  # fmt: skip
            assert {"*fp32", "*bf16", "*fp16"} <= pointers, (kernel, cc, pointers)
    for kernel in {k for k in kernels if k.startswith("_ersm")}:
        unit_strides = {("stride_d" in r, "stride_s" in r) for r in rows if r["kernel"] == kernel}
        assert unit_strides == {(True, False), (False, True)}, kernel  # channels-last and NCHW
    assert all(r["spill_bytes"] == 0 and r["registers"] <= 255 for r in rows)


def test_signature_follows_the_arguments():
    class Fake:
        arg_names = ["x_ptr", "n", "big", "scale", "flag", "stride", "BLOCK"]
        __name__ = "fake"

    item = aot.Launch(Fake, (1,), (torch.empty(2, dtype=torch.bfloat16, device="meta"), 32,
                                  2**40, 0.5, True, 1), {"BLOCK": 16}, 8)  # fmt: skip
    sig, constexprs, attrs = aot.signature(item)
    assert sig == {"x_ptr": "*bf16", "n": "i32", "big": "i64", "scale": "fp32", "flag": "i1",
                   "stride": "constexpr", "BLOCK": "constexpr"}  # fmt: skip
    assert constexprs == {"BLOCK": 16, "stride": 1}  # a 1 is specialised, as the JIT does
    assert set(attrs) == {(0,), (1,), (2,)}  # pointers and multiples of 16


def test_refuses_to_run_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="TRITON_INTERPRET=0"):
        aot.main([])
