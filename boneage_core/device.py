"""Where a fit runs and how its images reach the device: the device a config names, the autocast dtype
the hardware computes natively, whether the splits live on the GPU or stream from pinned host memory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from typing import TYPE_CHECKING

import numpy as np
import torch

from boneage_core.errors import BoneAgeError

if TYPE_CHECKING:
    from boneage_core.config import TrainConfig
    from boneage_core.dataset import Split

log = logging.getLogger(__name__)
ACTIVATION_BYTES_PER_PIXEL = 4000  # ResNet-50 training, per image pixel, fp32 with margin (bf16 needs about half)
MODEL_BYTES_PER_PARAMETER = 16  # weight, gradient and two Adam moments, fp32


def resolve_device(name: str) -> torch.device:
    """The device a config names, with its index on CUDA (tensors report cuda:0, never bare cuda, so
    comparisons need the index); a missing device is a BoneAgeError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise BoneAgeError(f"device {name!r} is not one of auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BoneAgeError(f"train.device = {name!r} but no CUDA device is visible; use auto or cpu")
        device = torch.device(name)
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= (count := torch.cuda.device_count()):
            raise BoneAgeError(f"train.device = {name!r} but only {count} CUDA device(s) are visible")
        return torch.device("cuda", index)
    return torch.device(name)


def amp_dtype(precision: str, device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. auto: bf16 on CUDA devices that compute it natively
    (compute capability 8 and up), fp16 (with loss scaling) on older ones, which only emulate bf16;
    fp32 on a CPU, where bf16 is 2.5-3x slower without hardware support."""
    if device_type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if capability is not None and capability[0] >= 8 else torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """amp_dtype for a run; a precision this device cannot give (bf16 or fp16 on a CPU) is said once,
    as a warning, and the run computes in fp32."""
    if device.type != "cuda" and cfg.precision in ("bf16", "fp16"):
        _warn_precision(cfg.precision, device.type)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return amp_dtype(cfg.precision, device.type, capability)


@functools.cache
def _warn_precision(precision: str, device_type: str) -> None:
    log.warning(f"train.precision = {precision} cannot be honoured on the {device_type}: it computes in fp32")


def autocast_for(cfg: TrainConfig, device: torch.device):
    dtype = autocast_dtype(cfg, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def images_fit_on_device(
    image_bytes: int, free_bytes: int, own_cached_bytes: int, model_bytes: int, activation_bytes: int, share: float
) -> bool:
    """Whether every split's images can live on the GPU. The budget is what this process may use of
    the device: the free memory plus the blocks its own allocator holds but no tensor uses, less the
    model with its optimizer state and a batch's activations, times its share of the device (K workers
    on one GPU each get 1/K, so they cannot all claim the same memory at once), with 10% to spare."""
    budget = (free_bytes + own_cached_bytes - model_bytes - activation_bytes) * share * 0.9
    return image_bytes <= budget


def place_images(
    cfg: TrainConfig, splits: list[Split], model: torch.nn.Module, device: torch.device, share: float
) -> str:
    """'device' or 'host', decided once for all splits of a fit: data_placement forces one."""
    if device.type != "cuda":
        return "device"  # a CPU holds everything in its memory anyway
    if cfg.data_placement != "auto":
        return cfg.data_placement
    free, _ = torch.cuda.mem_get_info(device)
    own_cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    model_bytes = sum(p.numel() for p in model.parameters()) * MODEL_BYTES_PER_PARAMETER
    activations = cfg.batch_size * cfg.image_size**2 * ACTIVATION_BYTES_PER_PIXEL
    image_bytes = sum(s.images.nbytes for s in splits)
    fits = images_fit_on_device(image_bytes, free, own_cached, model_bytes, activations, share)
    if not fits:
        log.info("%.1f GB of images do not fit on %s: streaming them from pinned memory", image_bytes / 1e9, device)
    return "device" if fits else "host"


def split_tensors(split: Split, device: torch.device, placement: str = "device") -> tuple[torch.Tensor, torch.Tensor]:
    """The split's (images, sex) as tensors: the images on the device, or in pinned host memory with
    placement 'host' (place_images decides which); sex always on the device."""
    images = torch.from_numpy(np.ascontiguousarray(split.images))
    images = images.to(device) if placement == "device" else images.pin_memory()
    male = torch.from_numpy(np.array(split.male, dtype=bool)).to(device)
    return images, male


def host_batches(images: torch.Tensor, order: torch.Tensor, batch_size: int, device: torch.device):
    """(index, batch) on a CUDA device from images in pinned host memory. Each batch is gathered into one
    of two pinned buffers and copied without blocking, so gathering the next batch overlaps the GPU's
    work on this one; a buffer is refilled only after its last copy has finished. (images[idx] itself
    would be pageable memory, whose copy blocks.)"""
    order = order.pin_memory()  # slices of a pinned tensor are pinned
    buffers = [torch.empty((batch_size, *images.shape[1:]), dtype=images.dtype).pin_memory() for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    for k, i in enumerate(range(0, len(order), batch_size)):
        idx = order[i : i + batch_size]
        slot = k % 2
        if copied[slot] is not None:
            copied[slot].synchronize()
        buffer = buffers[slot][: len(idx)]
        torch.index_select(images, 0, idx, out=buffer)
        batch = buffer.to(device, non_blocking=True)
        copied[slot] = torch.cuda.Event()
        copied[slot].record()
        yield idx.to(device, non_blocking=True), batch
