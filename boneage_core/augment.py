"""Batch augmentation on tensors with one strength knob in [0, 1]; the same code on CPU and GPU.

One affine grid per batch (rotation, translation, scale, horizontal flip) sampled with grid_sample,
then brightness and contrast. Strength 0 returns the batch untouched; 1 is strong but anatomical
(+-20 degrees, +-10% shift, +-15% scale, flip half the time, +-20% brightness and contrast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Gray equivalent of the ImageNet mean and std, so pretrained filters see familiar statistics.
PIXEL_MEAN = 0.449
PIXEL_STD = 0.226


def normalize(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float32 standardized pixels."""
    return (batch_uint8.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def augment_batch(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float (B, C, S, S) standardized pixels. Parameters are drawn on the CPU generator (B numbers
    each, so reproducible on any device) and applied on x's device in one grid_sample call."""
    if strength <= 0:
        return x
    b = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * scale * strength

    angle = uniform(math.radians(20))
    scale = 1.0 + uniform(0.15)
    tx, ty = uniform(0.2), uniform(0.2)  # grid units span [-1, 1], so 0.2 is 10% of the side
    flip = torch.where(torch.rand(b, generator=generator) < 0.5 * strength, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1).to(
        x.device, x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -PIXEL_MEAN / PIXEL_STD  # pixel value 0 after normalize: the dark film outside the scan
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1.0 + uniform(0.2)).to(x.device, x.dtype).view(b, 1, 1, 1)
    brightness = uniform(0.2 / PIXEL_STD).to(x.device, x.dtype).view(b, 1, 1, 1)
    return out * contrast + background + brightness
