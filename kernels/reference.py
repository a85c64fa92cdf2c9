"""Plain PyTorch references for the energy kernels (docs/design.md §5).

Every Triton kernel in this package must match the function of the same name
here (``tests/kernels/test_ersm_triton.py``, ``tests/kernels/test_potts_triton.py``). They are
vectorised, not loops, and they are the CPU path of the public entry points
and the fallback of a Triton kernel that fails. PB-EDropout's sampler on CPU
runs the same Potts model in the site layout of :mod:`energymask.kernels.lattice`
(a 4-neighbour gather per colour), checked against these.

- ``ersm_energy``: the ERSM token energy of docs/design.md §3 (Devynck et al.,
  "Energy-Regularized Spatial Masking", IJCAI 2026, arXiv 2604.06893), and
  ``token_logits``, its logits alone (the inference path; no Triton version).
- ``population_energy`` and ``gibbs_sweep``: the Potts energy and the
  checkerboard Gibbs update of PB-EDropout (docs/design.md §4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


class ErsmEnergy(NamedTuple):
    """Per-token quantities of an ERSM layer; every map has shape (B, h, w).

    ``output`` has the shape of the input feature map (B, C, H, W).
    """

    output: Tensor
    logits: Tensor
    keep: Tensor
    unary: Tensor
    pairwise: Tensor


def unit_tokens(x: Tensor, token_size: int) -> Tensor:
    """(B, C, H, W) -> unit tokens (B, C·p², H/p, W/p), channel order (c, dy, dx)."""
    tokens = F.pixel_unshuffle(x, token_size) if token_size > 1 else x
    return tokens / (token_norm(tokens) + EPS)


def token_norm(tokens: Tensor) -> Tensor:
    """‖x_i‖ over dim 1: (B, D, h, w) -> (B, 1, h, w).

    Not ``linalg.vector_norm``: over dim 1 of an NCHW tensor it is ~30x slower on
    CPU. The clamp keeps the gradient of a zero token finite (0, as vector_norm's).
    """
    return tokens.square().sum(1, keepdim=True).clamp_min(torch.finfo(tokens.dtype).tiny).sqrt()


def neighbour_similarity(unit: Tensor) -> Tensor:
    """Σ_{j∈N8(i)} ⟨x̂_i, x̂_j⟩ for unit tokens (B, D, h, w); off-grid neighbours give 0."""
    d = unit.shape[1]
    # 3x3 box sum per channel; a depthwise conv is ~5x faster than avg_pool2d on CPU.
    box = F.conv2d(unit, unit.new_ones(d, 1, 3, 3), padding=1, groups=d)
    return (unit * box).sum(dim=1) - unit.square().sum(dim=1)


def expand_tokens(token_map: Tensor, token_size: int) -> Tensor:
    """(B, h, w) per-token values -> (B, 1, H, W) per-pixel values."""
    token_map = token_map.unsqueeze(1)
    if token_size == 1:
        return token_map
    return token_map.repeat_interleave(token_size, 2).repeat_interleave(token_size, 3)


def ersm_energy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int,
    lam: float,
    gamma: float,
    temperature: float,
) -> ErsmEnergy:
    """ERSM token energies and masked output.

    Args:
        x: feature map (B, C, H, W), H and W divisible by ``token_size``.
        weight: projection w of shape (C·p²,), order (c, dy, dx).
        bias: scalar () or per-position (h, w).
        token_size: p. lam: λ. gamma: γ. temperature: T.

    Returns:
        ``ErsmEnergy(output, logits z, keep, unary U, pairwise P)``; float16 /
        bfloat16 inputs are computed in float32 and the output cast back.
    """
    in_dtype = x.dtype
    xf = x.float() if in_dtype in (torch.float16, torch.bfloat16) else x
    unit = unit_tokens(xf, token_size)
    logits = torch.einsum("bdhw,d->bhw", unit, weight.to(unit.dtype)) + bias.to(unit.dtype)
    keep = torch.sigmoid(-logits / temperature)
    unary = lam * F.softplus(logits)
    pairwise = gamma * F.softplus(neighbour_similarity(unit))
    output = (xf * expand_tokens(keep, token_size)).to(in_dtype)
    return ErsmEnergy(output, logits, keep, unary, pairwise)


def token_logits(x: Tensor, weight: Tensor, bias: Tensor, token_size: int) -> Tensor:
    """ERSM energy logits alone: z_i = wᵀ x_i / (‖x_i‖ + 1e-6) + b, (B, C, H, W) -> (B, h, w).

    The cheap inference path of docs/design.md §3: the same z as :func:`ersm_energy`
    without materialising the unit tokens (two reads of x instead of the
    energies' several passes). float16 / bfloat16 inputs give float32 logits.
    """
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    tokens = F.pixel_unshuffle(xf, token_size) if token_size > 1 else xf
    projected = torch.einsum("bdhw,d->bhw", tokens, weight.to(tokens.dtype))
    return projected / (token_norm(tokens)[:, 0] + EPS) + bias.to(tokens.dtype)


def population_energy(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """Potts energy of a population of binary masks.

    E(m) = Σ_k m_k u_k + β Σ_{(k,l)∈N4} [m_k ≠ m_l], each neighbour pair once.

    Args:
        masks: (K, B, C, h, w) with values in {0, 1}.
        unary: (B, C, h, w).
        beta: β ≥ 0.

    Returns:
        (K, B, C) float32 energies.
    """
    m = masks.float()
    u = unary.float()
    energy = (m * u).sum(dim=(-2, -1))
    cut = (m[..., 1:, :] - m[..., :-1, :]).abs().sum(dim=(-2, -1))
    cut = cut + (m[..., :, 1:] - m[..., :, :-1]).abs().sum(dim=(-2, -1))
    return energy + beta * cut


def conditional_field(masks: Tensor, unary: Tensor, beta: float) -> Tensor:
    """u_k + β Σ_{l∈N4(k)} (1 − 2 m_l), shape of ``masks`` (K, B, C, h, w)."""
    spin = 1.0 - 2.0 * masks.float()
    k, b, c, h, w = spin.shape
    padded = F.pad(spin.reshape(k * b * c, 1, h, w), (1, 1, 1, 1))
    neighbours = (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
    )
    return unary.float() + beta * neighbours.reshape(k, b, c, h, w)


def checkerboard(h: int, w: int, parity: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean (h, w) map of the sites with (row + col) % 2 == parity."""
    rows = torch.arange(h, device=device).unsqueeze(1)
    cols = torch.arange(w, device=device).unsqueeze(0)
    return (rows + cols) % 2 == parity


def gibbs_sweep(
    masks: Tensor, unary: Tensor, beta: float, temperature: float, parity: int, seed: int
) -> Tensor:
    """Resample the sites of one checkerboard colour from their Gibbs conditionals.

    P(m_k = 1 | rest) = sigmoid(−(u_k + β Σ_{l∈N4(k)} (1 − 2 m_l)) / T). Sites of
    the other colour are copied. Random numbers come from ``seed`` (the Triton
    kernel uses its own generator, so the two paths agree in distribution, not
    bit for bit).

    Args:
        masks: (K, B, C, h, w) in {0, 1}. unary: (B, C, h, w).
        parity: 0 or 1, the colour updated. seed: integer seed.

    Returns:
        New masks (K, B, C, h, w), in the dtype of ``masks`` (uint8 stays uint8).
    """
    field = conditional_field(masks, unary, beta)
    generator = torch.Generator(device=masks.device).manual_seed(int(seed))
    uniform = torch.rand(field.shape, generator=generator, device=masks.device, dtype=field.dtype)
    sampled = (uniform < torch.sigmoid(-field / temperature)).to(masks.dtype)
    site = checkerboard(field.shape[-2], field.shape[-1], parity, masks.device)
    return torch.where(site, sampled, masks)


__all__ = ["EPS", "ErsmEnergy", "checkerboard", "conditional_field", "ersm_energy", "expand_tokens",
           "gibbs_sweep", "population_energy", "token_logits", "token_norm"]
