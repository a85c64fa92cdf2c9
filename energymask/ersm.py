"""ERSM: Energy-Regularized Spatial Masking.

Devynck, Faye, Bouchaffra, Lazaar, Lebbah, Azzag, "Energy-Regularized Spatial
Masking", IJCAI 2026, https://arxiv.org/abs/2604.06893. Maths in DESIGN.md §3:

    x̂_i    = x_i / (‖x_i‖₂ + 1e-6)                  unit p×p×C token
    z_i    = wᵀ x̂_i + b                             energy logit
    keep_i = sigmoid(−z_i / T)                      low energy = kept
    U_i    = λ softplus(z_i)
    P_i    = γ softplus(Σ_{j∈N8(i)} ⟨x̂_i, x̂_j⟩)
    E_i    = U_i + P_i
    output = X ⊙ keep
    R      = mean_{b,i}(keep_i E_i) [+ η mean_{b,i} Σ_{j∈N4(i)} (keep_i − keep_j)²]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask.kernels import EPS, ersm_energy, expand_tokens, token_norm


class EnergyMaskOutput(NamedTuple):
    """Result of :func:`energy_mask_2d`.

    ``output`` is (B, C, H, W); ``keep``, ``logits``, ``unary``, ``pairwise`` and
    ``energy`` are (B, h, w); ``regularizer`` is a scalar.
    """

    output: Tensor
    keep: Tensor
    logits: Tensor
    unary: Tensor
    pairwise: Tensor
    energy: Tensor
    regularizer: Tensor


def _check_input(x: Tensor, channels: int | None, token_size: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be a 4D feature map (B, C, H, W), but got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"x must have {channels} channels, but got {x.shape[1]}")
    h, w = x.shape[-2:]
    if h % token_size or w % token_size:
        raise ValueError(
            f"x height and width must be divisible by token_size={token_size}, but got {h}x{w}"
        )


def _check_forced_mask(forced_mask: Tensor, shape: tuple[int, int, int]) -> Tensor:
    if tuple(forced_mask.shape) != shape:
        raise ValueError(
            f"forced_mask must have shape (B, h, w) = {shape}, but got {tuple(forced_mask.shape)}"
        )
    if not ((forced_mask == 0) | (forced_mask == 1)).all():
        raise ValueError("forced_mask values must be in {0, 1}, but got other values")
    return forced_mask


def mask_coherence(keep: Tensor) -> Tensor:
    """Σ_{j∈N4(i)} (keep_i − keep_j)² per token, (B, h, w) -> (B, h, w)."""
    vertical = (keep[:, 1:, :] - keep[:, :-1, :]).pow(2)
    horizontal = (keep[:, :, 1:] - keep[:, :, :-1]).pow(2)
    total = torch.zeros_like(keep)
    total[:, 1:, :] += vertical
    total[:, :-1, :] += vertical
    total[:, :, 1:] += horizontal
    total[:, :, :-1] += horizontal
    return total


def energy_mask_2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int = 1,
    lam: float = 1e-3,
    gamma: float = 1e-3,
    temperature: float = 1.0,
    eta: float = 0.0,
    forced_mask: Tensor | None = None,
    hard: bool = False,
    check_finite: bool = True,
    forced_soft: bool = False,
) -> EnergyMaskOutput:
    """Functional ERSM layer.

    Args:
        x: feature map (B, C, H, W).
        weight: (C·p²,) projection to the energy logit.
        bias: scalar () or per-position (h, w) bias.
        token_size: p, the side of a token in feature-map cells. Default: 1.
        lam, gamma: λ and γ, weights of the unary and pairwise energies. Default: 1e-3.
        temperature: T > 0 of the keep probability. Default: 1.
        eta: weight of the optional mask-coherence term in the regulariser. Default: 0.
        forced_mask: optional binary (B, h, w) mask (1 keep, 0 delete) that
            replaces the keep map, as in the deletion test.
        hard: replace keep by 1[keep ≥ 0.5] (inference with real sparsity).
        check_finite: raise on NaN/Inf features (one device sync). Default: True.
        forced_soft: with ``forced_mask``, keep = soft keep × forced_mask (deleted
            tokens go to 0, the rest keep their soft values) instead of the
            binary mask itself. Default: False (the authors' deletion protocol).

    Returns:
        :class:`EnergyMaskOutput`. The regulariser is computed from the soft
        keep map in every mode.
    """
    _check_call(x, weight, bias, token_size, temperature)
    res = ersm_energy(x, weight, bias, token_size, lam, gamma, temperature)
    if check_finite:
        _check_finite(res.logits)
    energy = res.unary + res.pairwise
    regularizer = (res.keep * energy).mean()
    if eta:
        regularizer = regularizer + eta * mask_coherence(res.keep).mean()
    if forced_mask is None and not hard:
        return EnergyMaskOutput(
            res.output, res.keep, res.logits, res.unary, res.pairwise, energy, regularizer
        )
    keep = _replace_keep(res.keep, forced_mask, hard, forced_soft)
    output = x * expand_tokens(keep, token_size).to(x.dtype)
    return EnergyMaskOutput(output, keep, res.logits, res.unary, res.pairwise, energy, regularizer)


def _check_finite(logits: Tensor) -> None:
    # A NaN or Inf anywhere in a token reaches its logit: checking the small
    # (B, h, w) logits costs far less than checking the feature map.
    if not torch.isfinite(logits).all():
        raise ValueError("x (the feature map) must be finite, but got NaN or Inf values")


def _check_call(
    x: Tensor, weight: Tensor, bias: Tensor, token_size: int, temperature: float
) -> None:
    _check_input(x, weight.numel() // (token_size * token_size), token_size)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, but got {temperature}")
    grid = (x.shape[2] // token_size, x.shape[3] // token_size)
    if bias.dim() == 2 and tuple(bias.shape) != grid:
        raise ValueError(
            f"per-position bias of grid size {tuple(bias.shape)} does not match the token grid "
            f"{grid} of the input"
        )


def _replace_keep(
    keep: Tensor, forced_mask: Tensor | None, hard: bool, forced_soft: bool = False
) -> Tensor:
    if forced_mask is not None:
        mask = _check_forced_mask(forced_mask, tuple(keep.shape)).to(keep.dtype)
        return keep * mask if forced_soft else mask
    if hard:
        return (keep >= 0.5).to(keep.dtype)
    return keep


def token_logits(x: Tensor, weight: Tensor, bias: Tensor, token_size: int = 1) -> Tensor:
    """z = wᵀ x_i / (‖x_i‖ + 1e-6) + b without materialising unit tokens: (B, C, H, W) -> (B, h, w).

    The cheap inference path: two reads of x instead of the energies' several passes.
    """
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    tokens = F.pixel_unshuffle(xf, token_size) if token_size > 1 else xf
    projected = torch.einsum("bdhw,d->bhw", tokens, weight.to(tokens.dtype))
    return projected / (token_norm(tokens)[:, 0] + EPS) + bias.to(tokens.dtype)


def energy_mask_2d_inference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int = 1,
    temperature: float = 1.0,
    forced_mask: Tensor | None = None,
    hard: bool = False,
    check_finite: bool = True,
    forced_soft: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The masked output without energies or regulariser: ``(output, keep, logits)``.

    Same arguments and checks as :func:`energy_mask_2d`; used by the layer in eval mode.
    """
    _check_call(x, weight, bias, token_size, temperature)
    logits = token_logits(x, weight, bias, token_size)
    if check_finite:
        _check_finite(logits)
    keep = _replace_keep(torch.sigmoid(-logits / temperature), forced_mask, hard, forced_soft)
    return x * expand_tokens(keep, token_size).to(x.dtype), keep, logits


class EnergyMask2d(nn.Module):
    """Energy-Mask layer of ERSM: scales each spatial token by its keep probability.

    Input and output: (B, C, H, W), H and W divisible by ``token_size``.

    Args:
        channels: C of the feature map.
        token_size: p. Default: 1.
        lam, gamma: λ, γ. Default: 1e-3 (authors' code).
        temperature: T. Default: 1.
        bias_init: initial bias; 6.0 starts with almost closed masks. Default: 6.0.
        grid_size: None for a scalar bias (any input size) or (h, w) for a
            per-position bias over a fixed token grid. Default: None.
        eta: mask-coherence weight η; 0 is the authors' regulariser. Default: 0.
        hard_inference: in eval mode use 1[keep ≥ 0.5]. Default: False.
        check_finite: raise on NaN/Inf features. Default: True.

    After each forward the layer keeps, detached: ``last_keep``, ``last_logits``,
    ``last_unary``, ``last_pairwise``, ``last_energy`` (B, h, w). In eval mode
    only the logits are computed in the forward (the cheap inference path); the
    energies are computed from the kept input when first read. In training it
    also keeps ``regularizer`` (with its graph when gradients are on) until
    :meth:`pop_regularizer` or :func:`collect_regularizer` takes it.
    """

    def __init__(
        self,
        channels: int,
        token_size: int = 1,
        lam: float = 1e-3,
        gamma: float = 1e-3,
        temperature: float = 1.0,
        bias_init: float = 6.0,
        grid_size: tuple[int, int] | None = None,
        eta: float = 0.0,
        hard_inference: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, but got {channels!r}")
        if not isinstance(token_size, int) or token_size < 1:
            raise ValueError(f"token_size must be a positive int, but got {token_size!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, but got {temperature}")
        for name, value in (("lam", lam), ("gamma", gamma), ("eta", eta)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, but got {value}")
        if grid_size is not None and (
            len(grid_size) != 2 or any(not isinstance(s, int) or s < 1 for s in grid_size)
        ):
            raise ValueError(
                f"grid_size must be None or (h, w) positive ints, but got {grid_size!r}"
            )
        self.channels = channels
        self.token_size = token_size
        self.lam, self.gamma, self.temperature, self.eta = lam, gamma, temperature, eta
        self.hard_inference = hard_inference
        self.check_finite = check_finite
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        dim = channels * token_size * token_size
        bound = 1.0 / math.sqrt(dim)  # nn.Linear(D, 1) initialisation
        self.weight = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.full(self.grid_size or (), float(bias_init)))
        self.forced_mask: Tensor | None = None
        self.forced_soft = False
        self.regularizer: Tensor | None = None
        self.last_keep: Tensor | None = None
        self.last_logits: Tensor | None = None
        self._energies: tuple[Tensor, Tensor, Tensor] | None = None
        self._energy_input: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        settings = dict(
            token_size=self.token_size,
            temperature=self.temperature,
            forced_mask=self.forced_mask,
            forced_soft=self.forced_soft,
            check_finite=self.check_finite,
        )
        if not self.training:
            # Inference needs only the logits; the energies are computed if asked for.
            output, keep, logits = energy_mask_2d_inference(
                x, self.weight, self.bias, hard=self.hard_inference, **settings
            )
            self.last_keep, self.last_logits = keep.detach(), logits.detach()
            self._energies, self._energy_input = None, x.detach()
            self.regularizer = None
            return output
        res = energy_mask_2d(
            x, self.weight, self.bias, lam=self.lam, gamma=self.gamma, eta=self.eta, **settings
        )
        self.last_keep, self.last_logits = res.keep.detach(), res.logits.detach()
        self._energies = (res.unary.detach(), res.pairwise.detach(), res.energy.detach())
        self._energy_input = None
        self.regularizer = res.regularizer if torch.is_grad_enabled() else res.regularizer.detach()
        return res.output

    def _last_energies(self) -> tuple[Tensor, Tensor, Tensor] | tuple[None, None, None]:
        if self._energies is None and self._energy_input is not None:
            with torch.no_grad():
                res = energy_mask_2d(
                    self._energy_input,
                    self.weight,
                    self.bias,
                    self.token_size,
                    self.lam,
                    self.gamma,
                    self.temperature,
                    check_finite=False,
                )
            self._energies = (res.unary, res.pairwise, res.energy)
            self._energy_input = None
        return self._energies or (None, None, None)

    @property
    def last_unary(self) -> Tensor | None:
        """U of the last forward, (B, h, w), detached."""
        return self._last_energies()[0]

    @property
    def last_pairwise(self) -> Tensor | None:
        """P of the last forward, (B, h, w), detached."""
        return self._last_energies()[1]

    @property
    def last_energy(self) -> Tensor | None:
        """E = U + P of the last forward, (B, h, w), detached."""
        return self._last_energies()[2]

    def pop_regularizer(self) -> Tensor | None:
        """Return the regulariser of the last forward and forget it."""
        value, self.regularizer = self.regularizer, None
        return value

    def extra_repr(self) -> str:
        bias = f"grid_size={self.grid_size}" if self.grid_size else "bias=scalar"
        return (
            f"{self.channels}, token_size={self.token_size}, lam={self.lam}, gamma={self.gamma}, "
            f"temperature={self.temperature}, eta={self.eta}, {bias}, "
            f"hard_inference={self.hard_inference}"
        )


@contextmanager
def forcing(layer: EnergyMask2d, mask: Tensor | None, soft: bool = False) -> Iterator[EnergyMask2d]:
    """Force ``layer``'s mask inside a ``with`` block; the previous forcing comes back after it.

    ``mask``: binary (B, h, w), 1 keep, 0 delete, or None (no forcing). With
    ``soft=False`` the keep map is the mask itself (the authors' deletion
    protocol); with ``soft=True`` it is the layer's own soft keep map times the
    mask (deleted tokens go to 0, the others keep their soft values).
    """
    saved = layer.forced_mask, layer.forced_soft
    layer.forced_mask, layer.forced_soft = mask, soft
    try:
        yield layer
    finally:
        layer.forced_mask, layer.forced_soft = saved


def energy_mask_layers(model: nn.Module) -> dict[str, EnergyMask2d]:
    """All :class:`EnergyMask2d` layers of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, EnergyMask2d)}


def collect_regularizer(model: nn.Module) -> Tensor | None:
    """Sum and clear the pending regularisers of every ERSM layer of ``model``.

    Returns None when no layer has one (eval mode, no forward since the last call).
    """
    values = [
        r for m in energy_mask_layers(model).values() if (r := m.pop_regularizer()) is not None
    ]
    return torch.stack(values).sum() if values else None
