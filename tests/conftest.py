"""Test set-up: run Triton kernels in the CPU interpreter (docs/design.md §5), strictly.

``TRITON_INTERPRET`` is read when the kernel modules are decorated, so it is set
here, before any test imports the package. ``ENERGYMASK_STRICT_KERNELS=1``: a
failing Triton kernel raises instead of falling back to the reference.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ENERGYMASK_STRICT_KERNELS", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def _boltzmann_pvalue(
    sweep,
    unary: torch.Tensor,
    beta: float,
    temperature: float,
    chains: int,
    sweeps: int,
    seed: int,
    exact_temperature: float | None = None,
):
    """Chi-square p-value of sampled 3x3 masks against the exact Boltzmann distribution.

    ``sweep`` has the signature of ``gibbs_sweep``; ``chains`` independent chains
    run ``sweeps`` red+black sweeps from random starts. Bins with expected count
    below 5 are merged into one.
    """
    from scipy.stats import chisquare

    from energymask.kernels.reference import population_energy

    h, w = unary.shape[-2:]
    configs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=h * w)))
    energy = population_energy(configs.reshape(-1, 1, 1, h, w), unary, beta).flatten()
    t_exact = temperature if exact_temperature is None else exact_temperature
    probs = torch.softmax(-energy.double() / t_exact, dim=0)

    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand(chains, 1, 1, h, w, generator=gen) < 0.5).float()
    for step in range(sweeps):
        for parity in (0, 1):
            masks = sweep(masks, unary, beta, temperature, parity, seed + 2 * step + parity)
    weights = 2 ** torch.arange(h * w - 1, -1, -1)
    index = (masks.reshape(chains, h * w).long() * weights).sum(dim=1)
    counts = torch.bincount(index, minlength=2 ** (h * w)).double()
    expected = probs * chains
    rare = expected < 5
    obs = torch.cat([counts[~rare], counts[rare].sum().reshape(1)])
    exp = torch.cat([expected[~rare], expected[rare].sum().reshape(1)])
    return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


@pytest.fixture
def boltzmann_pvalue():
    return _boltzmann_pvalue


def _heavy_imports(statement: str) -> list[str]:
    """The torch / Lightning / NumPy modules ``statement`` imports in a fresh interpreter."""
    import ast
    import subprocess
    import sys

    code = (f"import sys\n{statement}\nprint([m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'lightning', 'pytorch_lightning', 'numpy')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])  # a printed list of names


@pytest.fixture
def heavy_imports():
    """``heavy_imports("import X")``: what importing ``X`` costs (torch, Lightning, NumPy)."""
    return _heavy_imports


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after it: tiny models only contend with more
    (and the test machine is shared). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _DeviceStem(torch.nn.Module):
    """Stands in for a CUDA model: its parameter, the model's first, sits on ``device``
    (``meta``); it records where its input arrives and hands the CPU rest zeros."""

    def __init__(self, device):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.empty(0, device=device))
        self.seen = set()

    def forward(self, x):
        self.seen.add(x.device.type)
        return torch.zeros(x.shape)


@pytest.fixture
def device_stem():
    """The class of a first layer on another device (``meta`` stands in for CUDA)."""
    return _DeviceStem
