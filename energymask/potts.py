"""The Potts model of PB-EDropout's masks and its Gibbs sampler (docs/design.md §4).

For every (sample, channel) plane, a mask m ∈ {0,1}^{h×w} over the patches has

    E(m) = Σ_k m_k u_k + β Σ_{(k,l)∈N4} [m_k ≠ m_l],   P(m) ∝ exp(−E(m) / T),

sampled by checkerboard Gibbs sweeps, P(m_k = 1 | rest) = sigmoid(−f_k / T)
with f_k = u_k + β Σ_{l∈N4(k)} (1 − 2 m_l). Populations are uint8 tensors
(K, P, n) over the P = B·C planes and n = h·w sites, in the layout the
kernels chose once for this model (:func:`energymask.kernels.potts_lattice`:
grid order for the Triton kernels, checkerboard order for PyTorch);
:meth:`Potts.sites` and :meth:`Potts.grid` convert to and from the public
grid layout (K, B, C, h, w).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from energymask.kernels import (
    Lattice,
    lattice_energy,
    lattice_sweep,
    potts_lattice,
    to_grid,
    to_sites,
)


class Potts(NamedTuple):
    """The Gibbs distribution P(m) ∝ exp(−E(m)/T) of every plane; build with :func:`potts`.

    ``unary`` (B, C, h, w) float32; ``field`` (P, n) u_k + β deg_k in site order.
    """

    unary: Tensor
    field: Tensor
    beta: float
    temperature: float
    lattice: Lattice

    def sites(self, grid: Tensor) -> Tensor:
        """Grid layout (K, B, C, h, w) in {0, 1} -> site layout (K, P, n) uint8."""
        return to_sites(grid, self.lattice)

    def grid(self, masks: Tensor) -> Tensor:
        """Site layout (K, P, n) -> grid layout (K, B, C, h, w) float32."""
        return to_grid(masks, self.lattice, self.unary.shape[:2]).float()

    def energy(self, masks: Tensor) -> Tensor:
        """E(m) (K, P) float32 of a population (K, P, n) in site layout."""
        return lattice_energy(masks, self.lattice, self.unary, self.field, self.beta)

    def sweep(
        self, masks: Tensor, generator: torch.Generator, seeds: torch.Generator, sweeps: int = 1
    ) -> Tensor:
        """``sweeps`` checkerboard Gibbs sweeps (colour 0 then colour 1) of a population (K, P, n).

        ``generator`` draws the uniforms (device generator); ``seeds`` (CPU) the
        seeds of the Triton kernel. Returns new uint8 masks.
        """
        return lattice_sweep(masks, self.lattice, self.unary, self.field, self.beta,
                             self.temperature, generator, seeds, sweeps)  # fmt: skip


def potts(unary: Tensor, beta: float, temperature: float) -> Potts:
    """:class:`Potts` model of the unary energies (B, C, h, w) with β and T."""
    unary = unary.float()
    lat = potts_lattice(unary.shape[-2], unary.shape[-1], unary)
    field = unary.flatten(-2).flatten(0, 1).index_select(-1, lat.order) + beta * lat.degree
    return Potts(unary, field, float(beta), float(temperature), lat)


def random_masks(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Bernoulli(½) uint8 masks: bit 0 of each byte of random 63-bit integers."""
    total = 1
    for size in shape:
        total *= size
    device = generator.device
    words = torch.empty(-(-total // 8), dtype=torch.int64, device=device)
    return words.random_(generator=generator).view(torch.uint8)[:total].view(shape) & 1


def sample(
    model: Potts,
    population: int,
    sweeps: int,
    generator: torch.Generator,
    seeds: torch.Generator,
) -> Tensor:
    """K masks (K, P, n) uint8 by ``sweeps`` Gibbs sweeps from Bernoulli(½) starts."""
    shape = (population, model.field.shape[0], model.field.shape[1])
    return model.sweep(random_masks(shape, generator), generator, seeds, sweeps)


__all__ = ["Potts", "potts", "random_masks", "sample"]
