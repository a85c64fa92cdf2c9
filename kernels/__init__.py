"""Energy kernels: Triton on CUDA, PyTorch references elsewhere (docs/design.md §5).

The only door into the kernels: the rest of the package imports the names
below and nothing from the submodules. ``ersm_energy``, ``population_energy``
and ``gibbs_sweep`` have the signatures of the functions of the same name in
:mod:`energymask.kernels.reference` and pick their backend once per call
(:mod:`energymask.kernels.dispatch`): the Triton kernel on CUDA tensors (or
when forced), the reference otherwise; ``token_logits`` (the cheap inference
logits) and ``expand_tokens`` are PyTorch on every device. ERSM on CUDA takes the fastest
of Triton, ``torch.compile`` of the reference and eager from the measured
table (:func:`energymask.kernels.dispatch.ersm_backend`). For PB-EDropout's populations the
backend is picked once per model, by the mask layout (:func:`potts_lattice`,
:mod:`energymask.kernels.lattice`); :func:`lattice_energy` and
:func:`lattice_sweep` follow the layout. A Triton kernel that fails to compile
or launch falls back to the reference with one warning, or raises under
``ENERGYMASK_STRICT_KERNELS=1``. The Triton modules are imported lazily, on the
first call that needs them, so this package imports where Triton is absent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from . import lattice as _lattice
from . import reference
from .dispatch import (
    BACKENDS,
    STRICT_ENV,
    ersm_backend,
    get_backend,
    guarded,
    set_backend,
    triton_available,
    use_backend,
    use_triton,
)
from .lattice import Lattice, draw_seed, to_grid, to_sites
from .reference import ErsmEnergy, checkerboard, expand_tokens, token_logits  # PyTorch everywhere


def _ersm_triton() -> ModuleType:
    from . import ersm_triton

    return ersm_triton


def _potts_triton() -> ModuleType:
    from . import potts_triton

    return potts_triton


def _triton(module: Callable[[], ModuleType], name: str, fallback: Callable, *args):
    """``name`` of the Triton ``module()``, or ``fallback`` if it fails (:func:`guarded`).

    The module is imported on first use (plain imports: ``torch.compile`` traces them).
    """
    return guarded(name, lambda: getattr(module(), name)(*args), lambda: fallback(*args))


def ersm_energy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int,
    lam: float,
    gamma: float,
    temperature: float,
) -> ErsmEnergy:
    """ERSM token energies and masked output; see :func:`reference.ersm_energy`."""
    args = (x, weight, bias, token_size, lam, gamma, temperature)
    backend = ersm_backend(x, token_size)
    if backend == "triton":
        return _triton(_ersm_triton, "ersm_energy", reference.ersm_energy, *args)
    if backend == "compile":
        return guarded("ersm_energy compile", lambda: _compiled_ersm()(*args),
                       lambda: reference.ersm_energy(*args))  # fmt: skip
    return reference.ersm_energy(*args)


@functools.cache
def _compiled_ersm() -> Callable:
    """``torch.compile`` of the reference ERSM energy, built once (compiled per shape)."""
    return torch.compile(reference.ersm_energy)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """(K, B, C) Potts energies of a mask population; see :func:`reference.population_energy`."""
    if use_triton(masks):
        return _triton(
            _potts_triton, "population_energy", reference.population_energy, masks, unary, beta
        )
    return reference.population_energy(masks, unary, beta)


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """One checkerboard colour of Gibbs updates; see :func:`reference.gibbs_sweep`."""
    args = (masks, unary, beta, temperature, parity, seed)
    if use_triton(masks):
        return _triton(_potts_triton, "gibbs_sweep", reference.gibbs_sweep, *args)
    return reference.gibbs_sweep(*args)


def potts_lattice(height: int, width: int, like: Tensor) -> Lattice:
    """The mask layout of populations on the device of ``like``, backend chosen here, once.

    Grid order where the Triton kernels run on ``like``, checkerboard order for
    the PyTorch site-layout sweep otherwise.
    """
    return _lattice.lattice(height, width, like.device, grid_order=use_triton(like))


def lattice_energy(masks: Tensor, lat: Lattice, unary: Tensor, field: Tensor, beta: float):
    """E(m) (K, P) float32 of masks (K, P, n) in the layout ``lat``.

    ``unary`` (B, C, h, w); ``field`` (P, n) = u + β deg in site order.
    """
    if lat.grid_order:
        grid = to_grid(masks, lat, unary.shape[:2])
        energy = _triton(_potts_triton, "population_energy", reference.population_energy,
                         grid, unary, beta)  # fmt: skip
        return energy.flatten(1)
    return _lattice.site_energy(masks, lat, field, beta)


def lattice_sweep(
    masks: Tensor,
    lat: Lattice,
    unary: Tensor,
    field: Tensor,
    beta: float,
    temperature: float,
    generator: torch.Generator,
    seeds: torch.Generator,
    sweeps: int = 1,
) -> Tensor:
    """``sweeps`` checkerboard Gibbs sweeps (colour 0, then 1) of masks (K, P, n) uint8.

    ``generator`` draws the uniforms of the PyTorch path (device generator),
    ``seeds`` (CPU) the seeds of the Triton kernel. Returns new masks.
    """
    if not lat.grid_order:
        return _lattice.site_sweep(masks, lat, field, beta, temperature, generator, sweeps)
    grid = to_grid(masks, lat, unary.shape[:2])
    for _ in range(sweeps):
        for parity in (0, 1):
            grid = _triton(_potts_triton, "gibbs_sweep", reference.gibbs_sweep,
                           grid, unary, beta, temperature, parity, draw_seed(seeds))  # fmt: skip
    return grid.reshape(masks.shape)


__all__ = [
    "BACKENDS",
    "STRICT_ENV",
    "ErsmEnergy",
    "Lattice",
    "checkerboard",
    "draw_seed",
    "ersm_backend",
    "ersm_energy",
    "expand_tokens",
    "get_backend",
    "gibbs_sweep",
    "lattice_energy",
    "lattice_sweep",
    "population_energy",
    "potts_lattice",
    "set_backend",
    "to_grid",
    "to_sites",
    "token_logits",
    "triton_available",
    "use_backend",
    "use_triton",
]
