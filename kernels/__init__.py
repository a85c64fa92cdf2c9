"""Energy kernels: Triton on CUDA, PyTorch references elsewhere (DESIGN.md §5).

The rest of the package calls only the dispatching entry points below; they
have the signatures of :mod:`energymask.kernels.reference`. The Triton modules
are imported lazily, on the first call that needs them, so this package imports
where Triton is absent.
"""

from __future__ import annotations

from torch import Tensor

from . import reference
from .dispatch import BACKENDS, get_backend, set_backend, triton_available, use_backend, use_triton
from .reference import ErsmEnergy, expand_tokens, token_logits  # PyTorch on every device


def ersm_energy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int = 1,
    lam: float = 1e-3,
    gamma: float = 1e-3,
    temperature: float = 1.0,
) -> ErsmEnergy:
    """ERSM token energies and masked output; see :func:`reference.ersm_energy`."""
    if use_triton(x):
        from .ersm_triton import ersm_energy as triton_ersm_energy

        return triton_ersm_energy(x, weight, bias, token_size, lam, gamma, temperature)
    return reference.ersm_energy(x, weight, bias, token_size, lam, gamma, temperature)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """(K, B, C) Potts energies of a mask population; see :func:`reference.population_energy`."""
    if use_triton(masks):
        from .potts_triton import population_energy as triton_population_energy

        return triton_population_energy(masks, unary, beta)
    return reference.population_energy(masks, unary, beta)


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """One checkerboard colour of Gibbs updates; see :func:`reference.gibbs_sweep`."""
    if use_triton(masks):
        from .potts_triton import gibbs_sweep as triton_gibbs_sweep

        return triton_gibbs_sweep(masks, unary, beta, temperature, parity, seed)
    return reference.gibbs_sweep(masks, unary, beta, temperature, parity, seed)


__all__ = [
    "BACKENDS",
    "ErsmEnergy",
    "ersm_energy",
    "expand_tokens",
    "get_backend",
    "gibbs_sweep",
    "population_energy",
    "set_backend",
    "token_logits",
    "triton_available",
    "use_backend",
]
