"""Benchmark 5, GPU throughput: ResNet-50 training images/s at 224 and 512 px with the images resident on
the GPU, augmentation there, autocast and channels_last (only where CUDA is visible)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from boneage_core.checkpoint import TrainingState
from boneage_core.config import TrainConfig
from boneage_core.models import build_model
from boneage_core.train import make_optimizer, seed_everything, train_one_epoch
from search.bench.common import Sizes, section

GPU_EPOCH_IMAGES = 12611  # the RSNA training set
GPU_BATCH = {224: 128, 512: 32}


def gpu_throughput(
    device: torch.device,
    sizes: tuple[int, ...] = (224, 512),
    n_images: int = GPU_EPOCH_IMAGES,
    batch: dict[int, int] | None = None,
    warmup_batches: int = 8,
) -> list[dict]:
    """ResNet-50 training images/s per image size: the uint8 images resident on the device, augmentation
    on the device, bf16 autocast on CUDA and channels_last; one timed epoch of n_images after warm-up."""
    batch = batch or GPU_BATCH
    out = []
    for px in sizes:
        bs = batch.get(px, 32)
        cfg = TrainConfig(
            backbone="resnet50", image_size=px, batch_size=bs, epochs=1, aug_strength=0.5, device=str(device)
        )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(device)
        seed_everything(0)
        g = torch.Generator(device="cpu").manual_seed(0)
        images = torch.randint(0, 256, (n_images, px, px), dtype=torch.uint8, generator=g).to(device)
        targets = torch.randn(n_images, generator=g).to(device)
        male = (torch.rand(n_images, generator=g) < 0.5).to(device)
        model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
        optimizer = make_optimizer(cfg, model)
        state = TrainingState(model, optimizer, None, torch.amp.GradScaler("cuda", enabled=False), g)
        warm = min(n_images, warmup_batches * bs)
        train_one_epoch(state, images[:warm], targets[:warm], male[:warm], cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_one_epoch(state, images, targets, male, cfg)  # returns floats: synced
        epoch_s = time.perf_counter() - start
        trained = n_images // bs * bs
        row = {
            "image_px": px,
            "batch_size": bs,
            "images": n_images,
            "epoch_s": round(epoch_s, 2),
            "images_per_s": round(trained / epoch_s, 1),
        }
        if device.type == "cuda":
            row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        out.append(row)
        del images, model, optimizer, state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_gpu_throughput(sizes: Sizes, work: Path, device: torch.device, quick: bool, **_) -> dict:
    s = section(
        "GPU throughput: ResNet-50 training, bf16, channels_last, cache and augmentation on the GPU",
        "at least 2,500 images/s at 224 px on one H200",
    )
    if device.type != "cuda":
        s["skipped"] = (
            "no CUDA device visible on this machine; on a GPU machine run "
            "`python -m search bench --only gpu_throughput --device cuda` (under 5 minutes)"
        )
        s["measured"] = "not run (no GPU)"
        return s
    rows = gpu_throughput(device, sizes=(224,) if quick else (224, 512), n_images=2048 if quick else GPU_EPOCH_IMAGES)
    s["figures"] = {"gpu": torch.cuda.get_device_name(device), "runs": rows}
    at224 = next(r for r in rows if r["image_px"] == 224)
    s["met"] = at224["images_per_s"] >= 2500
    s["measured"] = "; ".join(
        f"{r['images_per_s']:,.0f} images/s at {r['image_px']} px (epoch {r['epoch_s']} s)" for r in rows
    )
    s["notes"] = [
        f"{torch.cuda.get_device_name(device)}; {rows[0]['images']} images per timed epoch, after "
        "8 warm-up batches (cudnn autotuning)."
    ]
    return s
