"""Backend choice between the Triton kernels and the PyTorch references."""

import subprocess
import sys

import pytest
import torch

import energymask.kernels as kernels
from energymask.kernels import dispatch, reference


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"backend must be one of .* but got 'cuda'"):
        kernels.set_backend("cuda")
    assert kernels.get_backend() == "auto"


def test_use_backend_restores_previous_even_on_error():
    with pytest.raises(KeyError), kernels.use_backend("reference"):
        assert kernels.get_backend() == "reference"
        raise KeyError("boom")
    assert kernels.get_backend() == "auto"


def test_auto_uses_reference_on_cpu(monkeypatch):
    monkeypatch.setattr(reference, "population_energy", lambda *a: "reference")
    assert not dispatch.use_triton(torch.zeros(1))
    assert kernels.population_energy(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.5) == (
        "reference"
    )


@pytest.mark.skipif(not dispatch.triton_available(), reason="needs triton")
def test_forced_triton_runs_the_triton_kernels(monkeypatch):
    potts = pytest.importorskip("energymask.kernels.potts_triton")
    ersm = pytest.importorskip("energymask.kernels.ersm_triton")
    monkeypatch.setattr(potts, "population_energy", lambda *a: "triton-energy")
    monkeypatch.setattr(potts, "gibbs_sweep", lambda *a: "triton-gibbs")
    monkeypatch.setattr(ersm, "ersm_energy", lambda *a: "triton-ersm")
    masks, unary = torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    with kernels.use_backend("triton"):
        assert kernels.population_energy(masks, unary, 0.5) == "triton-energy"
        assert kernels.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 0) == "triton-gibbs"
        x = torch.zeros(1, 2, 2, 2)
        got = kernels.ersm_energy(x, torch.zeros(2), torch.tensor(0.0), 1, 1e-3, 1e-3, 1.0)
        assert got == "triton-ersm"
    with kernels.use_backend("reference"):
        assert kernels.population_energy(masks, unary, 0.5).shape == (1, 1, 1)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_ok", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.population_energy(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.5)


def test_forced_triton_without_triton_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_ok", False)
    with kernels.use_backend("triton"), pytest.raises(RuntimeError, match="cannot be imported"):
        kernels.ersm_energy(torch.zeros(1, 2, 2, 2), torch.zeros(2), torch.tensor(0.0),
                            1, 1e-3, 1e-3, 1.0)


def test_package_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, energymask.kernels as k\n"
        "assert not k.triton_available()\n"
        "r = k.ersm_energy(torch.ones(1, 2, 3, 3), torch.ones(2), torch.tensor(0.0),\n"
        "                  1, 1e-3, 1e-3, 1.0)\n"
        "print(r.keep.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 3, 3])" in done.stdout


def broken_kernel_setup(monkeypatch):
    """Replace the Gibbs kernel by one that cannot compile (a non-power-of-two arange)."""
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    potts = pytest.importorskip("energymask.kernels.potts_triton")

    @triton.jit
    def broken(m_ptr, u_ptr, out_ptr, n_planes, n_unary, H, W, beta, inv_t, parity, seed,
               BLOCK_P: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        tl.store(out_ptr + tl.arange(0, 3), tl.load(m_ptr + tl.arange(0, 3)))

    monkeypatch.setattr(potts, "_gibbs_sweep", broken)
    monkeypatch.setattr(dispatch, "_failed", {})
    masks = (torch.rand(2, 1, 1, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    return masks, torch.zeros(1, 1, 3, 3)


def test_failing_kernel_raises_when_strict(monkeypatch):
    masks, unary = broken_kernel_setup(monkeypatch)
    monkeypatch.setenv(dispatch.STRICT_ENV, "1")
    with kernels.use_backend("triton"), pytest.raises(Exception, match="arange"):
        kernels.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 7)


def test_failing_kernel_falls_back_to_the_reference_with_one_warning(monkeypatch, recwarn):
    masks, unary = broken_kernel_setup(monkeypatch)
    monkeypatch.setenv(dispatch.STRICT_ENV, "0")
    want = reference.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 7)
    with kernels.use_backend("triton"):
        with pytest.warns(RuntimeWarning, match=r"Triton kernel 'gibbs_sweep' failed \(.*arange"):
            got = kernels.gibbs_sweep(masks, unary, 0.5, 1.0, 0, 7)
        again = kernels.gibbs_sweep(masks, unary, 0.5, 1.0, 1, 8)  # no second warning
    assert torch.equal(got, want)
    assert torch.equal(again, reference.gibbs_sweep(masks, unary, 0.5, 1.0, 1, 8))
    assert len(recwarn) == 0
    assert "gibbs_sweep" in dispatch._failed


def test_bad_arguments_are_not_swallowed_by_the_fallback(monkeypatch):
    monkeypatch.setenv(dispatch.STRICT_ENV, "0")
    monkeypatch.setattr(dispatch, "_failed", {})
    pytest.importorskip("energymask.kernels.potts_triton")
    with kernels.use_backend("triton"), pytest.raises(ValueError, match="masks must be"):
        kernels.population_energy(torch.zeros(2, 1, 1, 3, 3), torch.zeros(1, 1, 3, 4), 0.5)
    assert dispatch._failed == {}


def test_suite_runs_strict():
    assert dispatch.strict()


# ---- ERSM: the measured table ---------------------------------------------------------


def test_dtype_and_layout_classes():
    assert dispatch.dtype_class(torch.bfloat16) == dispatch.dtype_class(torch.float16) == "half"
    assert dispatch.dtype_class(torch.float32) == "float32"
    x = torch.zeros(2, 3, 4, 5)
    assert dispatch.layout_class(x) == "nchw"
    assert dispatch.layout_class(x.to(memory_format=torch.channels_last)) == "channels_last"
    assert dispatch.layout_class(torch.zeros(2, 1, 4, 5).to(memory_format=torch.channels_last)) == (
        "nchw"  # one channel: both layouts at once, the NCHW kernels take it
    )


def test_fastest_counts_triton_only_when_it_timed_these_kernels():
    row = {"eager_ms": 2.0, "compile_ms": 1.5, "triton_ms": 1.0, "triton_version": "v1"}
    assert dispatch.fastest(row, kernel_version="v2") == "compile"
    assert dispatch.fastest(row, kernel_version="v1") == "triton"
    assert dispatch.fastest({"eager_ms": 1.0, "compile_ms": 1.5}) == "reference"
    assert dispatch.fastest({}) == "reference"


TABLE = {"rows": [
    {"kernel": "ersm fwd+bwd", "device": "GPU A", "layout": "nchw", "dtype": "float32",
     "channels": 256, "map": 7, "eager_ms": 1.0, "compile_ms": 2.0},
    {"kernel": "ersm fwd+bwd", "device": "GPU A", "layout": "nchw", "dtype": "float32",
     "channels": 2048, "map": 56, "eager_ms": 3.0, "compile_ms": 2.0},
    {"kernel": "ersm fwd", "device": "GPU A", "layout": "nchw", "dtype": "float32",
     "channels": 2048, "map": 56, "eager_ms": 3.0, "triton_ms": 1.0,
     "triton_version": dispatch.ERSM_KERNEL_VERSION},
    {"kernel": "ersm fwd+bwd", "device": "GPU B", "layout": "nchw", "dtype": "float32",
     "channels": 2048, "map": 56, "eager_ms": 1.0, "compile_ms": 2.0},
]}  # fmt: skip


@pytest.mark.parametrize(
    ("device", "channels", "tokens", "backward", "want"),
    [
        ("GPU A", 256, 49, True, "reference"),  # measured: eager 1.0 < compile 2.0
        ("GPU A", 300, 64, True, "reference"),  # nearest row: C 256, 7x7
        ("GPU A", 1024, 28 * 28, True, "compile"),  # nearest: C 2048, 56x56
        ("GPU A", 2048, 56 * 56, False, "triton"),  # the forward rows
        ("GPU B", 256, 49, True, "reference"),  # its own rows only
        ("GPU C", 2048, 56 * 56, True, "compile"),  # no rows of its own: every GPU's
        ("cpu", 2048, 56 * 56, True, "reference"),
    ],
)
def test_table_choice_takes_the_nearest_row_of_the_device(device, channels, tokens, backward,
                                                          want):  # fmt: skip
    got, _ = dispatch.table_choice(device, channels, tokens, "nchw", "float32", backward, TABLE)
    assert got == want


def test_table_choice_without_a_matching_row_is_the_reference():
    assert dispatch.table_choice("GPU A", 256, 49, "channels_last", "float32", True, TABLE) == (
        "reference", None)  # fmt: skip
    assert dispatch.table_choice("GPU A", 256, 49, "nchw", "half", True, TABLE) == (
        "reference", None)  # fmt: skip


def test_shipped_table_never_picks_a_backend_slower_than_eager():
    table = dispatch.load_table()
    assert table["rows"] and {r["device"] for r in table["rows"]} <= {
        s["device"] for s in table["sources"]}  # fmt: skip
    for row in table["rows"]:
        choice = dispatch.fastest(row)
        assert row["choice"] == choice, row
        chosen = row["eager_ms" if choice == "reference" else f"{choice}_ms"]
        assert chosen <= row["eager_ms"], row
        if row.get("triton_version") != dispatch.ERSM_KERNEL_VERSION:
            assert choice != "triton", row  # stale Triton timings never pick Triton


def test_ersm_backend_on_cpu_is_the_reference_unless_forced():
    x = torch.zeros(1, 2, 3, 3)
    assert dispatch.ersm_backend(x) == "reference"
    with kernels.use_backend("compile"):
        assert dispatch.ersm_backend(x) == "compile"
    with kernels.use_backend("reference"):
        assert dispatch.ersm_backend(x) == "reference"


def test_compile_backend_runs_the_compiled_reference_and_falls_back(monkeypatch):
    monkeypatch.setattr(kernels, "_compiled_ersm", lambda: lambda *a: "compiled")
    args = (torch.ones(1, 2, 3, 3), torch.ones(2), torch.tensor(0.0), 1, 1e-3, 1e-3, 1.0)
    with kernels.use_backend("compile"):
        assert kernels.ersm_energy(*args) == "compiled"

    def broken(*args):
        raise RuntimeError("inductor: no C++ compiler (test)")

    monkeypatch.setattr(kernels, "_compiled_ersm", lambda: broken)
    monkeypatch.setattr(dispatch, "_failed", {})
    monkeypatch.setenv(dispatch.STRICT_ENV, "0")
    with kernels.use_backend("compile"):
        with pytest.warns(RuntimeWarning, match="'ersm_energy compile' failed .*no C\\+\\+"):
            got = kernels.ersm_energy(*args)
    torch.testing.assert_close(got.keep, reference.ersm_energy(*args).keep)
