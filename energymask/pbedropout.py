"""PB-EDropout: patch-based energy dropout (DESIGN.md §4, our formalisation).

No public code exists; this file is the project's formalisation. For an input
X (B, C, H, W) and patch size s, the patch grid is h = ⌈H/s⌉, w = ⌈W/s⌉
(border patches may be partial)::

    a_{b,c,k} = mean |X_{b,c}| over patch k                 patch activity
    â         = (a − mean_k a) / (std_k a + ε)              per (b, c)
    u_{b,c,k} = t_{b,c} − â_{b,c,k},  t = p-quantile of â_{b,c}   unary energy
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
4. EMA per channel: ``M_c ← α M_c + (1 − α) mean_b m*_{b,c}``.

Inference: ``m = 1[M_c ≥ 0.5]`` per channel, input independent, same rescaling.
Frozen: train with the inference masks, no sampling, no EMA update.

Implementation: steps 1–2 run under ``torch.no_grad()`` on uint8 populations
(K, B·C, h·w) with the patches in checkerboard order (``energymask.genetic``:
a Gibbs half-sweep is one batched matmul, a sigmoid and one uniform per site of
that colour; energies from the same adjacency matrix; flips by geometric gaps);
the applied mask and the energies are returned as float32, the output keeps the
input dtype (float16 / bfloat16 under autocast work). The ``pbedropout.*``
profiler ranges (unary, sample, refine, apply) time the phases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from energymask.genetic import MUTATIONS, evolve, gather_masks
from energymask.kernels import draw_seed
from energymask.potts import potts, sample

EPS = 1e-6


class PBEDropoutOutput(NamedTuple):
    """``output`` (B, C, H, W); ``mask`` (B, C, h, w) float32; ``energy`` (B, C) float32."""

    output: Tensor
    mask: Tensor
    energy: Tensor


def check_settings(
    p: float,
    patch_size: int,
    beta: float,
    temperature: float,
    population: int,
    generations: int,
    sweeps: int,
    elite_fraction: float,
    tournament_size: int,
    mutation_rate: float,
    mutation: str,
) -> None:
    """Raise ``ValueError`` for any setting out of range."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), but got {p}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, but got {patch_size}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, but got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, but got {temperature}")
    if population < 1:
        raise ValueError(f"population must be >= 1, but got {population}")
    if generations < 0:
        raise ValueError(f"generations must be >= 0, but got {generations}")
    if sweeps < 0:
        raise ValueError(f"sweeps must be >= 0, but got {sweeps}")
    if not 0.0 < elite_fraction < 1.0:
        raise ValueError(f"elite_fraction must be in (0, 1), but got {elite_fraction}")
    if tournament_size < 1:
        raise ValueError(f"tournament_size must be >= 1, but got {tournament_size}")
    if not 0.0 <= mutation_rate <= 1.0:
        raise ValueError(f"mutation_rate must be in [0, 1], but got {mutation_rate}")
    if mutation not in MUTATIONS:
        raise ValueError(f"mutation must be one of {MUTATIONS}, but got {mutation!r}")


def check_input(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be 4D (B, C, H, W), but got shape {tuple(x.shape)}")


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


def patch_unary(x: Tensor, patch_size: int, p: float) -> Tensor:
    """Unary energy u = t − â of DESIGN.md §4, float32 (B, C, h, w).

    Computed as u = (t' − (a − mean)) / (std + ε) with t' the p-quantile of
    a − mean: the same value, since the quantile commutes with the affine map.
    """
    activity = F.avg_pool2d(x.detach().float().abs(), patch_size, patch_size, ceil_mode=True)
    flat = activity.flatten(-2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    std = centred.square().mean(dim=-1, keepdim=True).sqrt_()
    return ((row_quantile(centred, p) - centred) / (std + EPS)).view_as(activity)


def sample_population(
    unary: Tensor,
    population: int,
    sweeps: int,
    beta: float,
    temperature: float,
    generator: torch.Generator,
    seeds: torch.Generator,
) -> Tensor:
    """K masks (K, B, C, h, w) float32 by ``sweeps`` checkerboard Gibbs sweeps from random starts.

    Grid-layout wrapper of :func:`energymask.potts.sample`.
    """
    model = potts(unary, beta, temperature)
    return model.grid(sample(model, population, sweeps, generator, seeds))


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
    p: float = 0.1,
    patch_size: int = 4,
    beta: float = 0.1,
    temperature: float = 0.1,
    population: int = 16,
    generations: int = 2,
    sweeps: int = 2,
    elite_fraction: float = 0.25,
    tournament_size: int = 2,
    mutation_rate: float = 0.05,
    mutation: str = "flip",
    rescale: bool = True,
    fitness: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> PBEDropoutOutput:
    """One training-mode PB-EDropout step on x (B, C, H, W); see the module docstring.

    Args:
        fitness: optional callable masks (K, B, C, h, w) float32 -> (K, B, C),
            higher is better, used instead of −E; the applied mask is then the
            fittest one. ``energy`` in the output is always E of that mask.
        generator: CPU ``torch.Generator``; one seed is drawn from it per call
            (from the global RNG when None), so seeded calls are reproducible.

    Returns:
        ``PBEDropoutOutput(output, mask m* (B, C, h, w), energy E(m*) (B, C))``.
    """
    check_input(x)
    check_settings(
        p, patch_size, beta, temperature, population, generations, sweeps,
        elite_fraction, tournament_size, mutation_rate, mutation,
    )  # fmt: skip
    b, c = x.shape[:2]
    h, w = grid_shape(x.shape[-2], x.shape[-1], patch_size)
    if p == 0.0:
        ones = torch.ones(b, c, h, w, device=x.device)
        return PBEDropoutOutput(x, ones, torch.zeros(b, c, device=x.device))
    call_seed = draw_seed(generator if generator is not None else torch.default_generator)
    seeds = torch.Generator().manual_seed(call_seed)
    device_gen = torch.Generator(device=x.device).manual_seed(call_seed)
    with torch.no_grad():
        with record_function("pbedropout.unary"):
            model = potts(patch_unary(x, patch_size, p), beta, temperature)
        with record_function("pbedropout.sample"):
            masks = sample(model, population, sweeps, device_gen, seeds)
        with record_function("pbedropout.refine"):
            masks, scores = evolve(
                masks, model, generations, device_gen, seeds,
                elite_fraction, tournament_size, mutation_rate, mutation, fitness,
            )  # fmt: skip
            top = scores.max(dim=0, keepdim=True)
            best = gather_masks(masks, top.indices)
            mask = model.grid(best)[0]
            energy = -top.values if fitness is None else model.energy(best)
            energy = energy.view(b, c)
    with record_function("pbedropout.apply"):
        output = apply_patch_mask(x, mask, patch_size, rescale)
    return PBEDropoutOutput(output, mask, energy)


class PBEDropout2d(nn.Module):
    """Patch-based energy dropout layer; see the module docstring for the maths.

    Args:
        channels: C of the input; checked at every forward.
        grid_size: (h, w) of the patch grid, to allocate the EMA buffer now.
            When None the buffer ``ema_mask`` is allocated at the first training
            forward (and resized by ``load_state_dict``), so it still round-trips.
            Initial EMA value: 1 (everything kept).
        seed: when given, the layer holds a CPU ``torch.Generator`` seeded with
            it; its state is saved in ``state_dict`` (extra state) so a resumed
            run continues exactly. When None the global RNG is used.
        Other arguments: see :func:`pb_edropout_2d`; ``ema_decay`` is α.

    Attributes after each training forward (detached): ``last_drop_rate``
    (float, realised fraction of dropped patches), ``last_energy`` (float, mean
    E of the applied masks), ``last_mask`` (B, C, h, w).
    """

    def __init__(
        self,
        channels: int,
        p: float = 0.1,
        patch_size: int = 4,
        beta: float = 0.1,
        temperature: float = 0.1,
        population: int = 16,
        generations: int = 2,
        sweeps: int = 2,
        elite_fraction: float = 0.25,
        tournament_size: int = 2,
        mutation_rate: float = 0.05,
        mutation: str = "flip",
        ema_decay: float = 0.99,
        rescale: bool = True,
        fitness: Callable[[Tensor], Tensor] | None = None,
        grid_size: tuple[int, int] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        check_settings(
            p, patch_size, beta, temperature, population, generations, sweeps,
            elite_fraction, tournament_size, mutation_rate, mutation,
        )  # fmt: skip
        if channels < 1:
            raise ValueError(f"channels must be >= 1, but got {channels}")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], but got {ema_decay}")
        self.channels = channels
        self.p = p
        self.patch_size = patch_size
        self.beta = beta
        self.temperature = temperature
        self.population = population
        self.generations = generations
        self.sweeps = sweeps
        self.elite_fraction = elite_fraction
        self.tournament_size = tournament_size
        self.mutation_rate = mutation_rate
        self.mutation = mutation
        self.ema_decay = ema_decay
        self.rescale = rescale
        self.fitness = fitness
        self.frozen = False
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        initial = torch.ones(channels, *grid_size) if grid_size is not None else torch.empty(0)
        self.register_buffer("ema_mask", initial)
        self.last_drop_rate: float | None = None
        self.last_energy: float | None = None
        self.last_mask: Tensor | None = None

    def freeze(self) -> None:
        """Train with the EMA masks from now on: no sampling, no EMA update."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def inference_mask(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """``1[M_c ≥ 0.5]`` as (1, C, h, w) float32; all ones before any training."""
        if self.ema_mask.numel() == 0:
            return torch.ones(1, self.channels, *grid, device=device)
        if tuple(self.ema_mask.shape[1:]) != grid:
            raise ValueError(
                f"patch grid of x must be {tuple(self.ema_mask.shape[1:])} (the EMA mask), "
                f"but got {grid}"
            )
        return (self.ema_mask >= 0.5).float().unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x)
        if x.shape[1] != self.channels:
            raise ValueError(f"x must have {self.channels} channels, but got {x.shape[1]}")
        if self.p == 0.0:
            return x
        grid = grid_shape(x.shape[-2], x.shape[-1], self.patch_size)
        if not self.training or self.frozen:
            mask = self.inference_mask(grid, x.device)
            return apply_patch_mask(x, mask, self.patch_size, self.rescale)
        if self.ema_mask.numel() == 0:
            self.ema_mask = torch.ones(self.channels, *grid, device=x.device)
        self.inference_mask(grid, x.device)  # checks the grid
        out = pb_edropout_2d(
            x, self.p, self.patch_size, self.beta, self.temperature, self.population,
            self.generations, self.sweeps, self.elite_fraction, self.tournament_size,
            self.mutation_rate, self.mutation, self.rescale, self.fitness, self.generator,
        )  # fmt: skip
        with torch.no_grad():
            alpha = self.ema_decay
            self.ema_mask.mul_(alpha).add_(out.mask.mean(dim=0), alpha=1.0 - alpha)
        self.last_mask = out.mask
        self.last_drop_rate = float(1.0 - out.mask.mean())
        self.last_energy = float(out.energy.mean())
        return out.output

    def get_extra_state(self) -> dict[str, Any]:
        state = self.generator.get_state() if self.generator is not None else None
        return {"generator_state": state, "frozen": self.frozen}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen", False))
        if state.get("generator_state") is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator_state"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        key = prefix + "ema_mask"
        if key in state_dict and state_dict[key].shape != self.ema_mask.shape:
            self.ema_mask = torch.empty_like(state_dict[key], device=self.ema_mask.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, p={self.p}, patch_size={self.patch_size}, beta={self.beta}, "
            f"temperature={self.temperature}, population={self.population}, "
            f"generations={self.generations}, sweeps={self.sweeps}, "
            f"mutation={self.mutation!r}, ema_decay={self.ema_decay}, rescale={self.rescale}, "
            f"frozen={self.frozen}"
        )
