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
