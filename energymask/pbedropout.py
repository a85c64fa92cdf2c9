"""PB-EDropout: patch-based energy dropout (docs/design.md §4, our formalisation).

No public code exists; this file is the project's formalisation. For an input
X (B, C, H, W) and patch size s, the patch grid is h = ⌈H/s⌉, w = ⌈W/s⌉
(border patches may be partial)::

    a_{b,c,k} = mean |X_{b,c}| over patch k                 patch activity
    â         = (a − mean_k a) / (std_k a + ε)              per (b, c)
    u_{b,c,k} = t_{b,c} + δ − â_{b,c,k}                     unary energy
                t = p-quantile of â_{b,c}, δ = calibration offset
    E(m)      = Σ_k m_k u_k + β Σ_{(k,l)∈N4} [m_k ≠ m_l]    m ∈ {0,1}^{h×w}, 1 = keep
    P(m)      ∝ exp(−E(m) / T)
    P(m_k = 1 | rest) = sigmoid(−(u_k + β Σ_{l∈N4(k)} (1 − 2 m_l)) / T)

Training step, for every (b, c) plane at once:

1. sample K masks by ``sweeps`` checkerboard Gibbs sweeps from Bernoulli(½) starts
   (``energymask.potts.sample``);
2. refine them for G generations (``energymask.genetic.evolve``, fitness −E or
   a user ``fitness``);
3. apply the fittest mask m* of the final population (lowest energy for the
   default fitness), upsampled to pixels and cropped to H×W, with inverted
   dropout scaling ``y = X · m* / keep_{b,c}``, keep = kept pixel fraction of
   the (b, c) plane (planes with nothing kept give 0);
4. EMA per channel: ``M_c ← α M_c + (1 − α) mean_b m*_{b,c}`` (keep frequency).

**p is a promise, as in nn.Dropout.** With δ = 0 about a fraction p of the
patches lean to be dropped, but the coupling β pulls masks to the local
majority (mostly "keep" when p < 0.5), so the realised drop rate falls short
(measured in docs/design.md §4, by ``benchmarks/results_pbedropout_calibration.py``). The layer
therefore calibrates δ, one scalar per layer, by integral control on the drop
rate r of each training step (share of dropped patches)::

    δ ← δ + η (p − r) / (p (1 − p))     η = ``calibration_rate``, δ = buffer ``threshold_offset``

Why this calibration: it shifts the whole Gibbs distribution and leaves the
rest of the method untouched (the applied mask is still the fittest sampled
mask, for any β, T, G or fitness), it costs one scalar and no extra sampling
after the first step, and integral control makes the long-run mean of r equal
p exactly (the mean error over N steps is p(1 − p) (δ_N − δ_0) / (η N)). δ
starting at 0 cost a warm-up of ~40 steps (issue 24), so the first training
step searches δ_0 on its batch (:func:`initial_offset`: bisection on r(δ)
with common random numbers, at most 14 calls of :func:`pb_edropout_2d`, once
per layer and run), and r is p from step 1; some lag remains when the
features change. The division by
p (1 − p) evens out the loop gain over p. η bounds the steepest response the
loop can follow without oscillating, η · slope / (p (1 − p)) < 2, where slope
= dr/dδ: 0.2–1.5 on 8×8 grids of ReLU noise (β ∈ {0.1, 0.5}), but ~4 on the
4×4 grids of ``shallow_cnn``'s layer2 in training, where η = 0.1 made r swing
between 0.03 and 0.2 from step to step. η = 0.03 follows slopes up to 6 and
warms up in ~40 steps on the flattest grids above (~5 on steep ones). δ is a
buffer: saved in checkpoints, averaged over processes by the callback.
:func:`pb_edropout_2d` alone is one step at a given δ; it is not calibrated.

**Deterministic masks** (inference and frozen training): per channel, drop
exactly ⌊p·h·w⌉ patches, those with the lowest keep frequency M_c (ties:
lowest grid index first), same rescaling (:func:`lowest_keep_mask`). A fixed
threshold ``1[M_c ≥ 0.5]`` would drop nothing when p < 0.5, since every patch
is kept in most samples. Inference uses them when ``deterministic_inference``
(default, as the paper says), else it is the identity, as in ``nn.Dropout``.
Frozen: train with the deterministic masks, no sampling, no EMA or δ update.

Implementation: steps 1–2 run under ``torch.no_grad()`` on uint8 populations
(K, B·C, h·w) with the patches in checkerboard order (``energymask.potts``, ``.genetic``);
the applied mask and the energies are float32, the output keeps the input
dtype (float64, float16, bfloat16, autocast). Non-finite activities (NaN / Inf
in x) count as activity 0, so a NaN plane still drops a share p of its patches
(its output stays NaN, as x is). The ``pbedropout.*`` profiler ranges (unary,
sample, refine, apply) time the phases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from energymask._checks import (
    check_bool,
    check_input,
    check_int,
    check_range,
    check_real,
    replaced,
)
from energymask.genetic import MUTATIONS, evolve, gather_masks
from energymask.kernels import draw_seed
from energymask.potts import potts, sample

EPS = 1e-6
OFFSET_SEARCH_STEPS = 14  # calls of pb_edropout_2d on the first training batch, at most
OFFSET_TOLERANCE = 0.002  # |r − p| that ends the search early


def _check_real(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> None:
    """``value`` a finite real number for which ``ok`` holds (``allowed`` says which, in words)."""
    check_real(name, value, f"a float {allowed}")
    check_range(name, value, allowed, ok)


def _check_int(name: str, value: Any, low: int) -> None:
    check_int(name, value, f"an int >= {low}")
    check_range(name, value, f"an int >= {low}", lambda v: v >= low)


@dataclass(frozen=True)
class PBEDropoutSettings:
    """Every setting of PB-EDropout, validated once when built (``ValueError`` / ``TypeError``).

    Args:
        p: drop rate in [0, 1); the realised training rate (calibrated) and the
            share dropped by the deterministic masks. Default: 0.1.
        patch_size: s, patch side in pixels. Default: 4.
        beta: β >= 0, pairwise weight (contiguous dropped regions). Default: 0.1.
        temperature: T > 0, randomness of the masks. Default: 0.1.
        population: K >= 1 candidate masks per plane. Default: 16.
        generations: G >= 0 genetic generations. Default: 2.
        sweeps: Gibbs sweeps from the random start. Default: 2.
        elite_fraction: share of K kept as elite, in (0, 1). Default: 0.25.
        tournament_size: >= 1. Default: 2.
        mutation_rate: μ in [0, 1], flip rate of ``"flip"``. Default: 0.05.
        mutation: ``"flip"`` or ``"gibbs"`` (one sweep). Default: ``"flip"``.
        rescale: inverted-dropout scaling by the kept pixel fraction. Default: True.
        ema_decay: α in [0, 1] of the keep-frequency EMA (layer only). Default: 0.99.
        calibration_rate: η >= 0 of the δ controller (layer only; 0 turns the
            calibration off). Default: 0.03.
        deterministic_inference: eval mode applies the deterministic masks;
            False: identity (layer only). Default: True.
    """

    p: float = 0.1
    patch_size: int = 4
    beta: float = 0.1
    temperature: float = 0.1
    population: int = 16
    generations: int = 2
    sweeps: int = 2
    elite_fraction: float = 0.25
    tournament_size: int = 2
    mutation_rate: float = 0.05
    mutation: str = "flip"
    rescale: bool = True
    ema_decay: float = 0.99
    calibration_rate: float = 0.03
    deterministic_inference: bool = True

    def __post_init__(self) -> None:
        _check_real("p", self.p, "in [0, 1)", lambda v: 0 <= v < 1)
        _check_int("patch_size", self.patch_size, 1)
        _check_real("beta", self.beta, ">= 0", lambda v: v >= 0)
        _check_real("temperature", self.temperature, "> 0", lambda v: v > 0)
        _check_int("population", self.population, 1)
        _check_int("generations", self.generations, 0)
        _check_int("sweeps", self.sweeps, 0)
        _check_real("elite_fraction", self.elite_fraction, "in (0, 1)", lambda v: 0 < v < 1)
        _check_int("tournament_size", self.tournament_size, 1)
        _check_real("mutation_rate", self.mutation_rate, "in [0, 1]", lambda v: 0 <= v <= 1)
        if self.mutation not in MUTATIONS:
            raise ValueError(f"mutation must be one of {MUTATIONS}, but got {self.mutation!r}")
        _check_real("ema_decay", self.ema_decay, "in [0, 1]", lambda v: 0 <= v <= 1)
        _check_real("calibration_rate", self.calibration_rate, ">= 0", lambda v: v >= 0)
        for name in ("rescale", "deterministic_inference"):
            check_bool(name, getattr(self, name))
        casts = {"float": float, "int": int}
        for field in dataclasses.fields(self):  # plain Python values (checkpoints load safely)
            if field.type in casts:
                object.__setattr__(self, field.name, casts[field.type](getattr(self, field.name)))

    @classmethod
    def of(cls, settings: PBEDropoutSettings | None, **fields: Any) -> PBEDropoutSettings:
        """``settings`` with ``fields`` replaced (defaults when None); unknown names raise."""
        return replaced(cls, settings, fields, a_class="a PBEDropoutSettings",
                        label="PB-EDropout", first="p")


class PBEDropoutOutput(NamedTuple):
    """``output`` (B, C, H, W); ``mask`` (B, C, h, w) float32; ``energy`` (B, C) float32."""

    output: Tensor
    mask: Tensor
    energy: Tensor


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid (⌈H/s⌉, ⌈W/s⌉)."""
    return -(-height // patch_size), -(-width // patch_size)


def row_quantile(values: Tensor, q: float) -> Tensor:
    """q-quantile along the last dim, linear interpolation (``torch.quantile``'s default).

    Reads the two order statistics it needs from a partial sort (``topk``). (..., n) -> (..., 1).
    """
    n = values.shape[-1]
    position = q * (n - 1)
    lo = math.floor(position)
    hi = min(lo + 1, n - 1)
    smallest = values.topk(hi + 1, dim=-1, largest=False).values
    return torch.lerp(smallest[..., lo : lo + 1], smallest[..., hi : hi + 1], position - lo)


def patch_unary(x: Tensor, patch_size: int, p: float, offset: float | Tensor = 0.0) -> Tensor:
    """Unary energy u = t + δ − â of the module docstring, float32 (B, C, h, w).

    Computed as u = (t' − (a − mean)) / (std + ε) + δ with t' the p-quantile of
    a − mean: the same value, since the quantile commutes with the affine map.
    Non-finite activities count as 0. ``offset`` δ: float or 0-dim tensor.
    """
    activity = F.avg_pool2d(x.detach().float().abs(), patch_size, patch_size, ceil_mode=True)
    activity = torch.where(activity.isfinite(), activity, 0.0)
    flat = activity.flatten(-2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    std = centred.square().mean(dim=-1, keepdim=True).sqrt_()
    unary = (row_quantile(centred, p) - centred) / (std + EPS)
    return (unary + offset).view_as(activity)


def lowest_keep_mask(keep_frequency: Tensor, p: float) -> Tensor:
    """Deterministic masks: (C, h, w) keep frequencies -> (C, h, w) float32 in {0, 1}.

    Per channel, the ⌊p·h·w⌉ patches with the lowest keep frequency are 0
    (dropped), ties broken by grid index (lowest first, a stable sort), the
    rest are 1.
    """
    flat = keep_frequency.detach().float().flatten(1)
    count = math.floor(p * flat.shape[1] + 0.5)
    dropped = torch.sort(flat, dim=1, stable=True).indices[:, :count]
    return torch.ones_like(flat).scatter_(1, dropped, 0.0).view_as(keep_frequency)


def apply_patch_mask(x: Tensor, mask: Tensor, patch_size: int, rescale: bool = True) -> Tensor:
    """x (B, C, H, W) times the patch mask (B or 1, C, h, w) upsampled and cropped.

    With ``rescale`` the result is divided by the kept pixel fraction of each
    (b, c) plane (0 where nothing is kept), computed on the patch grid from the
    pixel area of each (possibly partial) patch. The product is one broadcast
    over the (h, s, w, s) view of x (zero-padded to whole patches when needed).
    Output dtype = input dtype.
    """
    height, width = x.shape[-2:]
    h, w = mask.shape[-2:]
    s = patch_size
    mask = mask.float()
    if rescale:
        starts = torch.arange(max(h, w), device=x.device) * s
        area = (height - starts[:h]).clamp(max=s)[:, None] * (width - starts[:w]).clamp(max=s)
        keep = (mask * area).sum(dim=(-2, -1), keepdim=True) / (height * width)
        scale = torch.where(keep > 0, 1.0 / keep.clamp_min(EPS), torch.zeros_like(keep))
        mask = mask * scale
    if (h * s, w * s) != (height, width):
        x = F.pad(x, (0, w * s - width, 0, h * s - height))
    b, c = x.shape[:2]
    patches = x.view(b, c, h, s, w, s) * mask.to(x.dtype)[:, :, :, None, :, None]
    return patches.reshape(b, c, h * s, w * s)[..., :height, :width]


def pb_edropout_2d(
    x: Tensor,
    settings: PBEDropoutSettings | None = None,
    *,
    offset: float | Tensor = 0.0,
    fitness: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    **fields: Any,
) -> PBEDropoutOutput:
    """One training-mode PB-EDropout step on x (B, C, H, W) at threshold offset δ.

    Args:
        settings: :class:`PBEDropoutSettings`, or None for the defaults; any
            of its fields may also be given by name (``p=0.3``) and replace it.
            ``ema_decay``, ``calibration_rate`` and ``deterministic_inference``
            are the layer's and not used here.
        offset: δ (float or 0-dim tensor on x's device). Default: 0, which
            drops less than p when β > 0: :class:`PBEDropout2d` calibrates it.
        fitness: optional callable masks (K, B, C, h, w) float32 -> (K, B, C),
            higher is better, used instead of −E; the applied mask is then the
            fittest one. ``energy`` in the output is always E of that mask.
        generator: CPU ``torch.Generator``; one seed is drawn from it per call
            (from the global RNG when None), so seeded calls are reproducible.

    Returns:
        ``PBEDropoutOutput(output, mask m* (B, C, h, w), energy E(m*) (B, C))``;
        an empty batch (any size 0) gives empty tensors of those shapes.
    """
    check_input(x)
    s = PBEDropoutSettings.of(settings, **fields)
    b, c = x.shape[:2]
    h, w = grid_shape(x.shape[-2], x.shape[-1], s.patch_size)
    if s.p == 0.0 or x.numel() == 0:
        ones = torch.ones(b, c, h, w, device=x.device, dtype=torch.float32)
        return PBEDropoutOutput(x, ones, torch.zeros(b, c, device=x.device, dtype=torch.float32))
    call_seed = draw_seed(generator if generator is not None else torch.default_generator)
    seeds = torch.Generator().manual_seed(call_seed)
    device_gen = torch.Generator(device=x.device).manual_seed(call_seed)
    with torch.no_grad():
        with record_function("pbedropout.unary"):
            model = potts(patch_unary(x, s.patch_size, s.p, offset), s.beta, s.temperature)
        with record_function("pbedropout.sample"):
            masks = sample(model, s.population, s.sweeps, device_gen, seeds)
        with record_function("pbedropout.refine"):
            masks, scores = evolve(
                masks, model, s.generations, device_gen, seeds,
                s.elite_fraction, s.tournament_size, s.mutation_rate, s.mutation, fitness,
            )  # fmt: skip
            top = scores.max(dim=0, keepdim=True)
            best = gather_masks(masks, top.indices)
            mask = model.grid(best)[0]
            energy = -top.values if fitness is None else model.energy(best)
            energy = energy.view(b, c)
    with record_function("pbedropout.apply"):
        output = apply_patch_mask(x, mask, s.patch_size, s.rescale)
    return PBEDropoutOutput(output, mask, energy)


def initial_offset(
    x: Tensor,
    settings: PBEDropoutSettings,
    fitness: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    steps: int = OFFSET_SEARCH_STEPS,
) -> tuple[float, PBEDropoutOutput]:
    """δ at which one step on ``x`` drops a share p of the patches, and that step's output.

    The drop rate r(δ) of :func:`pb_edropout_2d` is found with common random
    numbers (``generator``'s state, the global one when None, is restored
    before every try), so r is a fixed, nearly monotone function of δ: the
    search brackets p by doubling from δ = 0 (δ in [−64, 64]) and bisects,
    ``steps`` calls of :func:`pb_edropout_2d` at most, and returns the δ whose
    r is nearest p with its output. ``generator`` ends as after one call, so
    a seeded run is reproducible and resumes exactly.
    """
    generator = generator if generator is not None else torch.default_generator
    state = generator.get_state()
    p = settings.p
    tries: list[tuple[float, float, PBEDropoutOutput]] = []

    def rate(offset: float) -> float:
        generator.set_state(state)
        out = pb_edropout_2d(x, settings, offset=offset, fitness=fitness, generator=generator)
        tries.append((offset, float(1.0 - out.mask.mean()), out))
        return tries[-1][1]

    lo = hi = 0.0
    first = rate(0.0)
    if abs(first - p) <= OFFSET_TOLERANCE:
        pass
    elif first < p:  # r grows with δ: find hi with r(hi) >= p
        hi = 1.0
        while rate(hi) < p and hi < 64 and len(tries) < steps:
            lo, hi = hi, 2 * hi
    else:
        lo = -1.0
        while rate(lo) > p and lo > -64 and len(tries) < steps:
            lo, hi = 2 * lo, lo
    while len(tries) < steps and min(abs(r - p) for _, r, _ in tries) > OFFSET_TOLERANCE:
        middle = (lo + hi) / 2
        if rate(middle) < p:
            lo = middle
        else:
            hi = middle
    offset, _, out = min(tries, key=lambda t: abs(t[1] - p))
    generator.set_state(state)
    draw_seed(generator)  # the one seed draw of the step returned
    return offset, out


class PBEDropout2d(nn.Module):
    """Patch-based energy dropout layer; see the module docstring for the maths.

    ``PBEDropout2d(64, p=0.2, beta=0.5)`` or ``PBEDropout2d(64, settings)``.

    Args:
        channels: C of the input; checked at every forward.
        settings: :class:`PBEDropoutSettings` (None: defaults); its fields may
            also be given by name and replace it.
        grid_size: (h, w) of the patch grid, to allocate the EMA buffer now.
            When None the buffer ``ema_mask`` is allocated at the first training
            forward (and resized by ``load_state_dict``), so it still round-trips.
            Initial EMA value: 1 (everything kept).
        seed: when given, the layer holds a CPU ``torch.Generator`` seeded with
            it; its state is saved in ``state_dict`` (extra state) so a resumed
            run continues exactly. When None the global RNG is used.
        fitness: see :func:`pb_edropout_2d`.

    Buffers: ``ema_mask`` (C, h, w) keep frequencies M_c and ``threshold_offset``
    (0-dim) δ, both float32 whatever the module's dtype (Lightning's "16-true"
    casts the module; the statistics keep their precision). The first sampled
    training step sets δ by :func:`initial_offset` on its batch (when
    ``calibration_rate`` > 0); ``offset_initialised``, in the extra state, says
    it has run, so a resumed or loaded layer does not search again.

    Attributes after each training forward (detached): ``last_drop_rate``
    (float, realised share of dropped patches, sampled or frozen),
    ``last_energy`` (float, mean E of the applied masks; None when frozen),
    ``last_mask`` (B or 1, C, h, w).
    """

    def __init__(
        self,
        channels: int,
        settings: PBEDropoutSettings | None = None,
        *,
        grid_size: tuple[int, int] | None = None,
        seed: int | None = None,
        fitness: Callable[[Tensor], Tensor] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        self.settings = PBEDropoutSettings.of(settings, **fields)
        _check_int("channels", channels, 1)
        if seed is not None:
            _check_int("seed", seed, 0)
        if grid_size is not None:
            if not isinstance(grid_size, tuple | list) or len(grid_size) != 2:
                raise ValueError(f"grid_size must be None or (h, w), but got {grid_size!r}")
            for size in grid_size:
                _check_int("grid_size", size, 1)
        self.channels = channels
        self.fitness = fitness
        self.frozen = False
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        initial = (torch.ones(channels, *grid_size, dtype=torch.float32)
                   if grid_size is not None else torch.empty(0, dtype=torch.float32))
        self.register_buffer("ema_mask", initial)
        self.register_buffer("threshold_offset", torch.zeros((), dtype=torch.float32))
        self.offset_initialised = False  # δ set from the first training batch (initial_offset)
        self.last_drop_rate: float | None = None
        self.last_energy: float | None = None
        self.last_mask: Tensor | None = None

    @property
    def p(self) -> float:
        return self.settings.p

    def freeze(self) -> None:
        """Train with the deterministic masks from now on: no sampling, no EMA or δ update."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def deterministic_mask(self, grid: tuple[int, int] | None = None) -> Tensor | None:
        """:func:`lowest_keep_mask` of ``ema_mask`` as (1, C, h, w); None before any training.

        ``grid``: the patch grid (h, w) of the input it will be applied to, checked
        against the EMA mask's; None: the EMA mask's own (nothing to check).
        """
        if self.ema_mask.numel() == 0:
            return None
        if grid is not None:
            self._check_grid(grid)
        return lowest_keep_mask(self.ema_mask, self.settings.p).unsqueeze(0)

    def _check_grid(self, grid: tuple[int, int]) -> None:
        if tuple(self.ema_mask.shape[1:]) != grid:
            raise ValueError(
                f"patch grid of x must be {tuple(self.ema_mask.shape[1:])} (the EMA mask), "
                f"but got {grid}"
            )

    def forward(self, x: Tensor) -> Tensor:
        check_input(x)
        if x.shape[1] != self.channels:
            raise ValueError(f"x must have {self.channels} channels, but got {x.shape[1]}")
        s = self.settings
        if s.p == 0.0 or x.numel() == 0:
            return x
        grid = grid_shape(x.shape[-2], x.shape[-1], s.patch_size)
        if self.training and not self.frozen:
            return self._sampled(x, grid)
        if not self.training and not s.deterministic_inference:
            return x
        mask = self.deterministic_mask(grid)
        if mask is None:
            return x  # no masks learnt yet
        if self.training:
            self.last_mask = mask
            self.last_drop_rate = float(1.0 - mask.mean())
            self.last_energy = None
        return apply_patch_mask(x, mask.to(x.device), s.patch_size, s.rescale)

    def _sampled(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        s = self.settings
        if self.ema_mask.numel() == 0:
            self.ema_mask = torch.ones(self.channels, *grid, device=x.device, dtype=torch.float32)
        self._check_grid(grid)
        if s.calibration_rate > 0 and not self.offset_initialised:
            offset, out = initial_offset(x, s, self.fitness, self.generator)
            self.threshold_offset.fill_(offset)
            self.offset_initialised = True
        else:
            out = pb_edropout_2d(x, s, offset=self.threshold_offset.to(x.device),
                                 fitness=self.fitness, generator=self.generator)
        with torch.no_grad():
            kept = out.mask.mean()
            gain = s.calibration_rate / (s.p * (1.0 - s.p))
            self.threshold_offset.add_(gain * (s.p - (1.0 - kept)))
            alpha = s.ema_decay
            self.ema_mask.mul_(alpha).add_(out.mask.mean(dim=0), alpha=1.0 - alpha)
        self.last_mask = out.mask
        self.last_drop_rate = float(1.0 - kept)
        self.last_energy = float(out.energy.mean())
        return out.output

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PBEDropout2d:
        # Keep the statistics in float32 when the module is cast (.half(), Lightning "*-true"):
        # in bfloat16 an EMA step of 0.01·(m − M) is below half a unit in the last place.
        super()._apply(fn, recurse)
        self.ema_mask = self.ema_mask.float()
        self.threshold_offset = self.threshold_offset.float()
        return self

    def get_extra_state(self) -> dict[str, Any]:
        state = self.generator.get_state() if self.generator is not None else None
        return {"generator_state": state, "frozen": self.frozen,
                "offset_initialised": self.offset_initialised}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen", False))
        # saved before issue 24: δ came from the controller alone, keep it
        self.offset_initialised = bool(state.get("offset_initialised", True))
        if state.get("generator_state") is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator_state"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        key = prefix + "ema_mask"
        if prefix + "threshold_offset" in state_dict:  # a loaded δ is not searched again,
            self.offset_initialised = True  # unless the extra state says it never was
        if key in state_dict and prefix + "threshold_offset" not in state_dict:
            state_dict[prefix + "threshold_offset"] = torch.zeros(())  # saved before calibration
        if key in state_dict and state_dict[key].shape != self.ema_mask.shape:
            self.ema_mask = torch.empty(state_dict[key].shape, device=self.ema_mask.device,
                                        dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"{self.channels}, p={s.p}, patch_size={s.patch_size}, beta={s.beta}, "
            f"temperature={s.temperature}, population={s.population}, "
            f"generations={s.generations}, sweeps={s.sweeps}, mutation={s.mutation!r}, "
            f"ema_decay={s.ema_decay}, rescale={s.rescale}, frozen={self.frozen}"
        )


__all__ = ["PBEDropout2d", "PBEDropoutOutput", "PBEDropoutSettings", "apply_patch_mask",
           "grid_shape", "lowest_keep_mask", "pb_edropout_2d", "patch_unary"]
