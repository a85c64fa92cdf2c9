"""ERSM: Energy-Regularized Spatial Masking.

Devynck, Faye, Bouchaffra, Lazaar, Lebbah, Azzag, "Energy-Regularized Spatial
Masking", IJCAI 2026, https://arxiv.org/abs/2604.06893. Maths in docs/design.md §3:

    x̂_i    = x_i / (‖x_i‖₂ + 1e-6)                  unit p×p×C token
    z_i    = wᵀ x̂_i + b                             energy logit
    keep_i = sigmoid(−z_i / T)                      low energy = kept
    U_i    = λ softplus(z_i)
    P_i    = γ softplus(Σ_{j∈N8(i)} ⟨x̂_i, x̂_j⟩)
    E_i    = U_i + P_i
    output = X ⊙ keep
    R      = mean_{b,i}(keep_i E_i) [+ η mean_{b,i} Σ_{j∈N4(i)} (keep_i − keep_j)²]

Ours, not the authors' (``gate="hard"``, docs/design.md §3): the layer executes
m_i = 1[keep_i ≥ 0.5] in training too, with the straight-through gradient of
keep_i, and output and R use m in place of keep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from energymask._checks import (
    check_bool,
    check_int,
    check_range,
    check_real,
    is_int,
    replaced,
)
from energymask.constants import GATES  # the masks a layer executes: soft, hard (ours)
from energymask.kernels import ersm_energy, expand_tokens, token_logits


class EnergyMaskOutput(NamedTuple):
    """Result of :func:`energy_mask_2d`.

    ``output`` is (B, C, H, W); ``logits``, ``keep``, ``unary``, ``pairwise`` and
    ``energy`` are (B, h, w); ``regularizer`` is a scalar. The first five fields
    are those of :class:`energymask.kernels.ErsmEnergy`, in the same order.
    """

    output: Tensor
    logits: Tensor
    keep: Tensor
    unary: Tensor
    pairwise: Tensor
    energy: Tensor
    regularizer: Tensor


def _check_real(name: str, value: object, low: float, strict: bool = False) -> None:
    """A finite real number >= low (> low when ``strict``); bool is refused."""
    check_real(name, value, "a real number", finite="finite (not NaN or Inf)", type_name=False)
    check_range(name, value, f"{'>' if strict else '>='} {low}",
                lambda v: v > low if strict else v >= low)


def _check_int(name: str, value: object) -> None:
    """A positive int; bool is refused."""
    check_int(name, value, "a positive int", type_name=False)
    check_range(name, value, "a positive int", lambda v: v >= 1, repr_value=True)


def _check_settings(lam: float, gamma: float, temperature: float, eta: float) -> None:
    for name, value in (("lam", lam), ("gamma", gamma), ("eta", eta)):
        _check_real(name, value, 0)
    _check_real("temperature", temperature, 0, strict=True)




@dataclass(frozen=True)
class ErsmSettings:
    """Every setting of an ERSM layer, validated once when built (``ValueError`` / ``TypeError``).

    The defaults are the authors' (their public code); the functions of this
    module and :class:`EnergyMask2d` take them from here.

    Args:
        token_size: p, the side of a token in feature-map cells. Default: 1.
        lam, gamma: λ, γ >= 0, weights of the unary and pairwise energies. Default: 1e-3.
        temperature: T > 0 of the keep probability. Default: 1.
        bias_init: initial bias; 6.0 starts with almost closed masks. Default: 6.0.
        grid_size: None for a scalar bias (any input size) or (h, w) for a
            per-position bias over a fixed token grid. Default: None.
        eta: η >= 0, mask-coherence weight; 0 is the authors' regulariser. Default: 0.
        hard_inference: in eval mode use 1[keep ≥ 0.5] (soft gate). Default: False.
        check_finite: raise on NaN/Inf features or parameters. Default: True.
        gate: ``"soft"`` (the authors') or ``"hard"`` (ours: the binary mask
            1[keep ≥ 0.5] in training and eval, straight-through gradient; the
            regulariser on the executed mask; docs/design.md §3). Default: ``"soft"``.
        keep_target: ours, a budget: None (the authors': none) or ρ in [0, 1];
            adds (mean_i keep_i − ρ)² per image, averaged over the batch, to the
            regulariser, on the executed keep map (DynConv's sparsity loss,
            Verelst & Tuytelaars, CVPR 2020). Default: None.
        gate_noise: ours, with ``gate="hard"`` only: σ >= 0, the scale of
            logistic noise added to −z/T in training (straight-through
            Gumbel-sigmoid, as DynConv): m = 1[−z/T + σ·g ≥ 0], g ~
            Logistic(0, 1), gradient of sigmoid(−z/T + σ·g). Eval is
            deterministic (no noise). 0: none, training executes the inference
            mask. Default: 0.
    """

    token_size: int = 1
    lam: float = 1e-3
    gamma: float = 1e-3
    temperature: float = 1.0
    bias_init: float = 6.0
    grid_size: tuple[int, int] | None = None
    eta: float = 0.0
    hard_inference: bool = False
    check_finite: bool = True
    gate: str = "soft"
    keep_target: float | None = None
    gate_noise: float = 0.0

    def __post_init__(self) -> None:
        _check_int("token_size", self.token_size)
        _check_settings(self.lam, self.gamma, self.temperature, self.eta)
        _check_real("bias_init", self.bias_init, -math.inf)
        grid = self.grid_size
        if grid is not None and (
            not isinstance(grid, (tuple, list))
            or len(grid) != 2
            or any(not is_int(s) or s < 1 for s in grid)
        ):
            raise ValueError(f"grid_size must be None or (h, w) positive ints, but got {grid!r}")
        for name in ("hard_inference", "check_finite"):
            check_bool(name, getattr(self, name))
        _check_gate(self.gate)
        _check_keep_target(self.keep_target)
        _check_gate_noise(self.gate_noise, self.gate)
        if self.keep_target is not None:
            object.__setattr__(self, "keep_target", float(self.keep_target))
        # plain Python values (checkpoints load safely, settings compare equal)
        for name in ("lam", "gamma", "temperature", "bias_init", "eta", "gate_noise"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "token_size", int(self.token_size))
        if grid is not None:
            object.__setattr__(self, "grid_size", (int(grid[0]), int(grid[1])))

    @classmethod
    def of(cls, settings: ErsmSettings | None, **fields: Any) -> ErsmSettings:
        """``settings`` with ``fields`` replaced (defaults when None); unknown names raise."""
        return replaced(cls, settings, fields, a_class="an ErsmSettings", label="ERSM",
                        first="lam")


def _check_gate(gate: object) -> None:
    if gate not in GATES:
        raise ValueError(f"gate must be one of {list(GATES)} (\"soft\": the authors', "
                         f"\"hard\": ours), but got {gate!r}")


def _check_keep_target(keep_target: object) -> None:
    if keep_target is None:
        return
    _check_real("keep_target", keep_target, 0)
    check_range("keep_target", keep_target, "None or in [0, 1]", lambda v: v <= 1)


def _check_gate_noise(gate_noise: object, gate: str) -> None:
    _check_real("gate_noise", gate_noise, 0)
    if gate_noise and gate != "hard":
        raise ValueError(f"gate_noise (ours) applies to gate=\"hard\" only, but got gate={gate!r} "
                         f"with gate_noise={gate_noise}; use gate=\"hard\" or gate_noise=0")


def noisy_keep(logits: Tensor, temperature: float, gate_noise: float) -> Tensor:
    """Ours: sigmoid(−z/T + σ·g), g ~ Logistic(0, 1) drawn from torch's global generator, (B, h, w).

    The soft keep of the straight-through Gumbel-sigmoid (Jang et al. 2017,
    arXiv 1611.01144; DynConv, Verelst & Tuytelaars, CVPR 2020); σ = 0 gives
    sigmoid(−z/T).
    """
    if not gate_noise:
        return torch.sigmoid(-logits / temperature)
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    return torch.sigmoid(-logits / temperature + gate_noise * (u.log() - (-u).log1p()))


def straight_through_gate(keep: Tensor) -> Tensor:
    """Ours: m = 1[keep ≥ 0.5] in the forward, ∂m/∂keep = 1 in the backward, (B, h, w).

    The forward value is exactly binary (``keep − keep.detach()`` is exactly 0);
    the gradient is the soft keep map's (Bengio et al. 2013, arXiv 1308.3432).
    """
    hard = (keep >= 0.5).to(keep.dtype)
    return hard + (keep - keep.detach())



def _check_input(x: Tensor, channels: int | None, token_size: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, C, H, W), but got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor (float16, bfloat16, float32 or float64), but got "
            f"{x.dtype}; convert it first, e.g. x.float()"
        )
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
    if not isinstance(forced_mask, Tensor):
        raise TypeError(
            f"forced_mask must be a tensor (B, h, w), but got {type(forced_mask).__name__}"
        )
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
    token_size: int = ErsmSettings.token_size,
    lam: float = ErsmSettings.lam,
    gamma: float = ErsmSettings.gamma,
    temperature: float = ErsmSettings.temperature,
    eta: float = ErsmSettings.eta,
    forced_mask: Tensor | None = None,
    hard: bool = False,
    check_finite: bool = True,
    forced_soft: bool = False,
    gate: str = ErsmSettings.gate,
    keep_target: float | None = ErsmSettings.keep_target,
    gate_noise: float = ErsmSettings.gate_noise,
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
        gate: ``"soft"`` (the authors') or ``"hard"`` (ours): keep is replaced
            by :func:`straight_through_gate` of it before the output and the
            regulariser, in every mode. Default: ``"soft"``.
        keep_target: None or a budget ρ in [0, 1] (ours): R += mean_b (mean_i
            keep_i − ρ)². Default: None.
        gate_noise: σ >= 0, with ``gate="hard"`` only (ours): the executed mask
            is 1[−z/T + σ·g ≥ 0] with fresh logistic noise g (:func:`noisy_keep`);
            the layer passes it in training only. Default: 0.

    Returns:
        :class:`EnergyMaskOutput`. The regulariser is computed from the keep map
        the gate executes (soft gate: the soft map, also with ``hard``; hard
        gate: the binary map), before any ``forced_mask``. ``keep`` is the map
        the output used. A zero-size input (B, H or W = 0) gives empty maps and
        a zero regulariser.
    """
    _check_settings(lam, gamma, temperature, eta)
    _check_gate(gate)
    _check_keep_target(keep_target)
    _check_gate_noise(gate_noise, gate)
    return _energy_mask_2d(x, weight, bias, token_size, lam, gamma, temperature, eta,
                           forced_mask, hard, check_finite, forced_soft, gate, keep_target,
                           float(gate_noise))


def _energy_mask_2d(x: Tensor, weight: Tensor, bias: Tensor, token_size: int, lam: float,
                    gamma: float, temperature: float, eta: float, forced_mask: Tensor | None,
                    hard: bool, check_finite: bool, forced_soft: bool, gate: str,
                    keep_target: float | None = None, gate_noise: float = 0.0,
                    ) -> EnergyMaskOutput:
    """:func:`energy_mask_2d` with the settings already checked (the layer's path)."""
    _check_call(x, weight, bias, token_size)
    if x.numel() == 0:
        empty = _empty_maps(x, token_size)
        return EnergyMaskOutput(x.clone(), *(empty,) * 5, empty.sum())
    res = ersm_energy(x, weight, bias, token_size, lam, gamma, temperature)
    if check_finite:
        _check_finite(res.logits, weight, bias)
    if gate == "hard":
        keep = noisy_keep(res.logits, temperature, gate_noise) if gate_noise else res.keep
        executed = straight_through_gate(keep)
    else:
        executed = res.keep
    energy = res.unary + res.pairwise
    regularizer = (executed * energy).mean()
    if eta:
        regularizer = regularizer + eta * mask_coherence(executed).mean()
    if keep_target is not None:
        regularizer = regularizer + (executed.flatten(1).mean(1) - keep_target).pow(2).mean()
    if forced_mask is None and not hard and gate == "soft":
        return EnergyMaskOutput(*res, energy, regularizer)
    keep = _replace_keep(executed, forced_mask, hard and gate == "soft", forced_soft)
    output = x * expand_tokens(keep, token_size).to(x.dtype)
    return EnergyMaskOutput(output, res.logits, keep, res.unary, res.pairwise, energy, regularizer)


def _empty_maps(x: Tensor, token_size: int) -> Tensor:
    """The (B, h, w) maps of a zero-size input, in the dtype the kernels give."""
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    b, _, h, w = x.shape
    return x.new_zeros(b, h // token_size, w // token_size, dtype=dtype)


def _check_finite(logits: Tensor, weight: Tensor, bias: Tensor) -> None:
    # A NaN or Inf anywhere in a token, or in the layer's parameters, reaches
    # its logit: checking the small (B, h, w) logits costs far less than
    # checking the feature map. Only on failure are the parameters looked at.
    if torch.isfinite(logits).all():
        return
    for name, value in (("weight", weight), ("bias", bias)):
        if not torch.isfinite(value).all():
            raise ValueError(
                f"{name} (a parameter of the ERSM layer) must be finite, but got NaN or Inf "
                "values: training diverged or the weights were loaded from a bad checkpoint"
            )
    raise ValueError("x (the feature map) must be finite, but got NaN or Inf values")


def _check_call(x: Tensor, weight: Tensor, bias: Tensor, token_size: int) -> None:
    _check_int("token_size", token_size)
    if not isinstance(weight, Tensor) or weight.dim() != 1:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a 1D tensor of C·p² elements, but got {got}")
    if not isinstance(bias, Tensor) or bias.dim() not in (0, 2):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise TypeError(
            f"bias must be a scalar tensor () or a per-position (h, w) one, but got {got}"
        )
    _check_input(x, weight.numel() // (token_size * token_size), token_size)
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


def energy_mask_2d_inference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    token_size: int = ErsmSettings.token_size,
    temperature: float = ErsmSettings.temperature,
    forced_mask: Tensor | None = None,
    hard: bool = False,
    check_finite: bool = True,
    forced_soft: bool = False,
    gate: str = ErsmSettings.gate,
) -> tuple[Tensor, Tensor, Tensor]:
    """The masked output without energies or regulariser: ``(output, logits, keep)``.

    Same arguments and checks as :func:`energy_mask_2d` (the fields in the same
    order); used by the layer in eval mode. The logits come from
    :func:`energymask.kernels.token_logits`, two reads of x.
    """
    _check_real("temperature", temperature, 0, strict=True)
    _check_gate(gate)
    return _energy_mask_2d_inference(x, weight, bias, token_size, temperature, forced_mask,
                                     hard, check_finite, forced_soft, gate)


def _energy_mask_2d_inference(x: Tensor, weight: Tensor, bias: Tensor, token_size: int,
                              temperature: float, forced_mask: Tensor | None, hard: bool,
                              check_finite: bool, forced_soft: bool, gate: str,
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`energy_mask_2d_inference` with the settings already checked."""
    _check_call(x, weight, bias, token_size)
    if x.numel() == 0:
        empty = _empty_maps(x, token_size)
        return x.clone(), empty, empty
    logits = token_logits(x, weight, bias, token_size)
    if check_finite:
        _check_finite(logits, weight, bias)
    keep = torch.sigmoid(-logits / temperature)
    if gate == "hard":
        keep = straight_through_gate(keep)
    keep = _replace_keep(keep, forced_mask, hard and gate == "soft", forced_soft)
    return x * expand_tokens(keep, token_size).to(x.dtype), logits, keep


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(ErsmSettings))


class EnergyMask2d(nn.Module):
    """Energy-Mask layer of ERSM: scales each spatial token by its keep probability
    (the authors'), or with ``gate="hard"`` (ours) keeps or zeroes it.

    Input and output: (B, C, H, W), H and W divisible by ``token_size``.

    Args:
        channels: C of the feature map.
        settings: an :class:`ErsmSettings` (None: the authors' defaults).
        **fields: settings to replace, by name (``token_size``, ``lam``,
            ``gamma``, ``temperature``, ``bias_init``, ``grid_size``, ``eta``,
            ``hard_inference``, ``check_finite``, ``gate``; see
            :class:`ErsmSettings`), e.g. ``EnergyMask2d(64, bias_init=0.0)``.

    The settings are validated once, here, and read-only afterwards
    (``layer.settings``, and each as an attribute: ``layer.lam``, ...). With
    ``gate="hard"`` (ours) the layer executes the binary mask 1[keep ≥ 0.5] in
    training and in eval, and ``last_keep`` is that binary mask.

    After each forward the layer keeps, detached: ``last_keep`` (the map the
    output used) and ``last_logits`` (B, h, w), and, when the energies were
    computed, ``last_unary``, ``last_pairwise``, ``last_energy`` (B, h, w; None
    otherwise). In training the energies are always computed, and
    ``regularizer`` is kept (with its graph when gradients are on) until
    :meth:`pop_regularizer` or :func:`collect_regularizer` takes it, and so
    is ``executed_keep`` (B, h, w), the map the output used, with its graph
    (for a module downstream that sends its own gradient to the mask:
    ``masked_residual(..., block_gradient=True)``, ours); None in eval. In eval
    mode the forward takes the cheap inference path (the logits alone, two
    reads of x) unless the attribute ``eval_energies`` is True (see
    :func:`computing_energies`); the layer never holds on to its input.
    """

    def __init__(
        self, channels: int, settings: ErsmSettings | None = None, **fields: Any
    ) -> None:
        super().__init__()
        self.settings = ErsmSettings.of(settings, **fields)
        _check_int("channels", channels)
        self.channels = int(channels)
        dim = self.channels * self.token_size * self.token_size
        bound = 1.0 / math.sqrt(dim)  # nn.Linear(D, 1) initialisation
        self.weight = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.full(self.grid_size or (), self.settings.bias_init))
        self.forced_mask: Tensor | None = None
        self.forced_soft = False
        self.eval_energies = False
        self.regularizer: Tensor | None = None
        self.executed_keep: Tensor | None = None
        self.last_keep: Tensor | None = None
        self.last_logits: Tensor | None = None
        self.last_unary: Tensor | None = None
        self.last_pairwise: Tensor | None = None
        self.last_energy: Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        # each setting reads as an attribute (read-only: the settings are frozen)
        if name in _SETTING_NAMES and "settings" in self.__dict__:
            return getattr(self.__dict__["settings"], name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SETTING_NAMES:
            raise AttributeError(
                f"{name} is a setting of the ERSM layer, validated once and read-only; build "
                f"a new layer, e.g. EnergyMask2d(channels, layer.settings, {name}=...)"
            )
        super().__setattr__(name, value)

    def forward(self, x: Tensor) -> Tensor:
        s = self.settings  # validated once, in __init__
        hard = s.hard_inference and not self.training
        if not (self.training or self.eval_energies):
            output, logits, keep = _energy_mask_2d_inference(
                x, self.weight, self.bias, s.token_size, s.temperature, self.forced_mask, hard,
                s.check_finite, self.forced_soft, s.gate,
            )
            self.last_keep, self.last_logits = keep.detach(), logits.detach()
            self.last_unary = self.last_pairwise = self.last_energy = None
            self.regularizer = self.executed_keep = None
            return output
        res = _energy_mask_2d(
            x, self.weight, self.bias, s.token_size, s.lam, s.gamma, s.temperature, s.eta,
            self.forced_mask, hard, s.check_finite, self.forced_soft, s.gate, s.keep_target,
            s.gate_noise if self.training else 0.0,
        )
        self.last_keep, self.last_logits = res.keep.detach(), res.logits.detach()
        self.last_unary, self.last_pairwise = res.unary.detach(), res.pairwise.detach()
        self.last_energy = res.energy.detach()
        reg = res.regularizer if torch.is_grad_enabled() else res.regularizer.detach()
        self.regularizer = reg if self.training else None
        self.executed_keep = res.keep if self.training else None
        return res.output

    def __getstate__(self) -> dict:
        # the regulariser and the executed keep of the last training forward hold its
        # graph, which cannot be copied: a copied or pickled layer starts without them
        return {**super().__getstate__(), "regularizer": None, "executed_keep": None}

    def pop_regularizer(self) -> Tensor | None:
        """Return the regulariser of the last forward and forget it."""
        value, self.regularizer = self.regularizer, None
        return value

    def extra_repr(self) -> str:
        bias = f"grid_size={self.grid_size}" if self.grid_size else "bias=scalar"
        return (
            f"{self.channels}, token_size={self.token_size}, lam={self.lam}, gamma={self.gamma}, "
            f"temperature={self.temperature}, eta={self.eta}, {bias}, "
            f"hard_inference={self.hard_inference}, gate={self.gate!r}"
            + (f", keep_target={self.keep_target}" if self.keep_target is not None else "")
            + (f", gate_noise={self.gate_noise}" if self.gate_noise else "")
        )


@contextmanager
def computing_energies(layer: EnergyMask2d) -> Iterator[EnergyMask2d]:
    """Compute U, P and E in eval mode too inside a ``with`` block (``last_unary``, ...).

    Eval mode skips the energies by default: inference then reads x twice and
    the layer keeps nothing of it. Inside the block the eval forward takes the
    training path's energy computation instead (same output and keep map).
    """
    saved = layer.eval_energies
    layer.eval_energies = True
    try:
        yield layer
    finally:
        layer.eval_energies = saved


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


__all__ = ["GATES", "EnergyMask2d", "EnergyMaskOutput", "ErsmSettings", "collect_regularizer",
           "computing_energies", "energy_mask_2d", "energy_mask_2d_inference", "energy_mask_layers",
           "forcing", "noisy_keep", "straight_through_gate"]
