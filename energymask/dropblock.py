"""DropBlock (Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
NeurIPS 2018).

Our own code (the core depends on torch alone), following timm's ``drop_block_fast_2d``
(with the valid-centre seeds of timm's ``drop_block_2d``).

For an input X (B, C, H, W), drop probability p and block size k' (clipped:
k = min(k', H, W))::

    γ    = p · H·W / k² / ((H − k + 1) · (W − k + 1))     seed rate
    s    ~ Bernoulli(γ) on the (H − k + 1) × (W − k + 1) valid centres of each
           (b, c) plane, zero elsewhere (a block around a valid centre lies inside the map)
    drop = max_pool2d(s, kernel k, stride 1, padding k // 2)     grown to k × k blocks
    m    = 1 − drop                                              1 = keep
    y    = X · m · numel(m) / Σ m      (y = 0 when Σ m = 0; no rescaling with ``scale=False``)

γ makes the expected number of dropped pixels p·H·W if blocks never overlapped;
overlapping blocks make the realised rate lower, the more so the larger p: on
16×16 with k = 3 the expected rate is 0.095 for p = 0.1, 0.26 for p = 0.3, 0.39
for p = 0.5 and 0.59 for p = 0.9 (``tests/core/test_dropblock.py``).
Masks are drawn per sample and per channel; the rescaling uses the kept fraction
of the whole batch, as timm does. For an even k the pooled map is (H + 1, W + 1);
its last H rows and W columns are kept, so every block is a full k × k square
inside the map. The mask is computed in float32 and cast to the input dtype at
the end, so float16 / bfloat16 inputs work (and give the same mask as float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energymask._checks import check_input, check_range, check_real


def check_settings(drop_prob: float, block_size: int) -> None:
    """Raise for drop_prob not a finite number in [0, 1) or block_size not an int >= 1."""
    check_real("drop_prob", drop_prob, "a float in [0, 1)", type_name=False)
    check_range("drop_prob", drop_prob, "in [0, 1)", lambda v: 0.0 <= v < 1.0, repr_value=True)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, but got {block_size!r}")


def drop_block_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    """Seed rate γ of the module docstring, with the block size clipped to min(H, W)."""
    k = min(block_size, height, width)
    return drop_prob * height * width / k**2 / ((height - k + 1) * (width - k + 1))


def drop_block_mask(
    shape: torch.Size | tuple[int, ...],
    drop_prob: float,
    block_size: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Keep mask m (B, C, H, W) float32, 1 = keep, before any rescaling."""
    b, c, height, width = shape
    k = min(block_size, height, width)
    gamma = drop_block_gamma(drop_prob, block_size, height, width)
    centres = (b, c, height - k + 1, width - k + 1)
    seeds = (torch.rand(centres, generator=generator, device=device) < gamma).float()
    # valid centres: rows k//2 .. H - (k-1)//2 - 1, likewise for columns
    seeds = F.pad(seeds, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2))
    dropped = F.max_pool2d(seeds, kernel_size=k, stride=1, padding=k // 2)
    return 1.0 - dropped[..., -height:, -width:]


def drop_block_2d(
    x: Tensor,
    drop_prob: float,
    block_size: int,
    training: bool = True,
    generator: torch.Generator | None = None,
    scale: bool = True,
) -> Tensor:
    """DropBlock on x (B, C, H, W); see the module docstring.

    Args:
        drop_prob: p in [0, 1); 0 gives x itself.
        block_size: k' >= 1, clipped to min(H, W).
        training: when False x itself is returned.
        generator: ``torch.Generator`` on x's device for the seeds (the global
            RNG when None), so seeded calls are reproducible.
        scale: multiply the kept values by numel / number kept.

    Returns:
        (B, C, H, W), dtype of x; x itself when it is empty (a size is 0).
    """
    check_input(x)
    check_settings(drop_prob, block_size)
    if not training or drop_prob == 0.0 or x.numel() == 0:
        return x
    mask = drop_block_mask(x.shape, drop_prob, block_size, x.device, generator)
    if scale:
        mask = mask * (mask.numel() / mask.sum().clamp_min(1.0))
    return x * mask.to(x.dtype)


class DropBlock2d(nn.Module):
    """DropBlock layer; identity in eval mode and for drop_prob = 0.

    Args:
        drop_prob, block_size, scale: see :func:`drop_block_2d`.
        generator: optional ``torch.Generator`` on the input's device, used for
            every training forward.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        scale: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_settings(drop_prob, block_size)
        self.drop_prob = drop_prob
        self.block_size = block_size
        self.scale = scale
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return drop_block_2d(
            x, self.drop_prob, self.block_size, self.training, self.generator, self.scale
        )

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, scale={self.scale}"


__all__ = ["DropBlock2d", "drop_block_2d", "drop_block_gamma", "drop_block_mask"]
