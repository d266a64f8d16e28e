"""Batch augmentation on tensors with one strength knob in [0, 1]; the same code on CPU and GPU.

One affine grid per batch (rotation, translation, scale, horizontal flip) from torch's affine_grid,
sampled with grid_sample, then brightness and contrast (unless intensity=False). Strength 0 returns
the batch untouched; 1 is strong but anatomical (+-20 degrees, +-10% shift, +-15% scale, flip half
the time, +-20% brightness and contrast). Strength 1 without intensity is the original project's
augmentation: torchvision's RandomRotation(20), RandomHorizontalFlip() and
RandomAffine(translate=(0.1, 0.1), scale=(0.85, 1.15)), composed into one resampling instead of three.
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


def _draw(b: int, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """The batch's random parameters, drawn on the CPU generator (B numbers each, so reproducible on any
    device) in a fixed order, packed as (B, 8): the affine matrix's two rows, contrast, brightness."""

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * scale * strength

    angle = uniform(math.radians(20))
    scale = 1.0 + uniform(0.15)
    tx, ty = uniform(0.2), uniform(0.2)  # grid units span [-1, 1], so 0.2 is 10% of the side
    flip = torch.where(torch.rand(b, generator=generator) < 0.5 * strength, -1.0, 1.0)
    contrast = 1.0 + uniform(0.2)
    brightness = uniform(0.2 / PIXEL_STD)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([cos * flip, -sin, tx, sin * flip, cos, ty, contrast, brightness], 1)


def _on_device(params: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch's parameters on the batch's device in one copy. Several small copies from pageable
    memory would each wait for the GPU stream, so the CPU could never run ahead of it; one pinned
    copy without blocking lets it."""
    if device.type == "cuda":
        return params.pin_memory().to(device, non_blocking=True)
    return params.to(device)


def augmented_batch(
    batch_uint8: torch.Tensor, strength: float, generator: torch.Generator | None = None, intensity: bool = True
) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> augmented standardized float32 in few passes over the pixels: the geometric
    transform samples the raw pixels (0 is the dark film, so zero padding is the background), then
    standardization, contrast and brightness are one multiply-add per image. The random draws are the
    same with or without intensity, so switching it off changes nothing else."""
    if strength <= 0:
        return normalize(batch_uint8)
    b = batch_uint8.shape[0]
    p = _on_device(_draw(b, strength, generator), batch_uint8.device)
    theta, contrast, brightness = p[:, :6].view(b, 2, 3), p[:, 6], p[:, 7]
    if not intensity:
        contrast, brightness = torch.ones_like(contrast), torch.zeros_like(brightness)
    x = batch_uint8.float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = (contrast / (255.0 * PIXEL_STD)).view(b, 1, 1, 1)
    offset = (brightness - PIXEL_MEAN / PIXEL_STD).view(b, 1, 1, 1)
    return torch.addcmul(offset, out, gain)
