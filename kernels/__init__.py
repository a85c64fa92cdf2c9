"""Energy kernels: Triton on CUDA, PyTorch references elsewhere (DESIGN.md §5).

The only door into the kernels: the rest of the package imports the names
below and nothing from the submodules. Each entry point has the signature of
the function of the same name in :mod:`energymask.kernels.reference` and picks
its backend once per call (:mod:`energymask.kernels.dispatch`): the Triton
kernel on CUDA tensors (or when forced), the reference otherwise. A Triton
kernel that fails to compile or launch falls back to the reference with one
warning, or raises under ``ENERGYMASK_STRICT_KERNELS=1``. The Triton modules
are imported lazily, on the first call that needs them, so this package
imports where Triton is absent.
"""

from __future__ import annotations

from torch import Tensor

from . import reference
from .dispatch import (
    BACKENDS,
    STRICT_ENV,
    get_backend,
    guarded,
    set_backend,
    triton_available,
    use_backend,
    use_triton,
)
from .reference import EPS, ErsmEnergy, checkerboard, expand_tokens, token_norm, unit_tokens


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
    args = (x, weight, bias, token_size, lam, gamma, temperature)
    if use_triton(x):

        def fast() -> ErsmEnergy:
            from .ersm_triton import ersm_energy as triton_ersm_energy

            return triton_ersm_energy(*args)

        return guarded("ersm_energy", fast, lambda: reference.ersm_energy(*args))
    return reference.ersm_energy(*args)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """(K, B, C) Potts energies of a mask population; see :func:`reference.population_energy`."""
    if use_triton(masks):

        def fast() -> Tensor:
            from .potts_triton import population_energy as triton_population_energy

            return triton_population_energy(masks, unary, beta)

        return guarded(
            "population_energy", fast, lambda: reference.population_energy(masks, unary, beta)
        )
    return reference.population_energy(masks, unary, beta)


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """One checkerboard colour of Gibbs updates; see :func:`reference.gibbs_sweep`."""
    args = (masks, unary, beta, temperature, parity, seed)
    if use_triton(masks):

        def fast() -> Tensor:
            from .potts_triton import gibbs_sweep as triton_gibbs_sweep

            return triton_gibbs_sweep(*args)

        return guarded("gibbs_sweep", fast, lambda: reference.gibbs_sweep(*args))
    return reference.gibbs_sweep(*args)


__all__ = [
    "BACKENDS",
    "EPS",
    "STRICT_ENV",
    "ErsmEnergy",
    "checkerboard",
    "ersm_energy",
    "expand_tokens",
    "get_backend",
    "gibbs_sweep",
    "population_energy",
    "set_backend",
    "token_norm",
    "triton_available",
    "unit_tokens",
    "use_backend",
    "use_triton",
]
