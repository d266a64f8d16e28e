"""Training and evaluation in months: fit(config, train, val, on_epoch_end) -> FitResult.

The images of both splits live as one uint8 tensor each, on the GPU when they fit there (else in pinned
host memory), so a batch is an index into memory plus tensor augmentation: no decoding, no DataLoader
workers. fit() calls on_epoch_end(epoch, metrics) after each epoch; whatever that raises (the search
raises optuna.TrialPruned there) goes straight through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boneage_core.augment import augmented_batch, normalize
from boneage_core.config import TrainConfig, check_config
from boneage_core.errors import BoneAgeError, TrainingDiverged
from boneage_core.metrics import regression_metrics
from boneage_core.models import BoneAgeNet, build_model

log = logging.getLogger(__name__)
EVAL_BATCH = 128
BN_RECALIBRATION_IMAGES = 256  # enough for stable statistics; bounds the cost per evaluation


@dataclass
class Split:
    """One split ready for training: uint8 images (n, S, S), ages in months, sex, ids."""

    images: np.ndarray
    age_months: np.ndarray
    male: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.age_months)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    pred_months: np.ndarray | None = None  # predictions of the last evaluation, on the eval split
    metrics: dict[str, float] = field(default_factory=dict)  # full metrics of the last evaluation
    # the last epoch's predictions with the batch-norm statistics gathered during training, as the
    # seed project evaluated (only when fit was asked for them)
    pred_months_without_bn_reestimation: np.ndarray | None = None
    model: BoneAgeNet | None = None
    target_mean: float = 0.0  # months: the model predicts (age - mean) / std of the training ages
    target_std: float = 1.0


def resolve_device(name: str) -> torch.device:
    """The device a config names, with its index on CUDA (tensors report cuda:0, never bare cuda, so
    comparisons need the index); a missing device is a BoneAgeError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
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


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return amp_dtype(cfg.precision, device.type, capability)


def autocast_for(cfg: TrainConfig, device: torch.device):
    dtype = _amp_dtype(cfg, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def loss_fn(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "huber":
        return F.huber_loss(pred, target, delta=1.0)  # targets are standardized: delta = one SD
    return F.mse_loss(pred, target)


def training_batches(
    images: torch.Tensor,
    male: torch.Tensor,
    batch_size: int,
    aug_strength: float,
    generator: torch.Generator,
    device: torch.device,
    drop_last: bool = True,
    aug_intensity: bool = True,
):
    """One epoch of (index, augmented standardized batch) in a seeded random order: the whole data path.

    images live on the device when they fit there (a batch is then an index plus tensor ops on the
    device); otherwise in pinned host memory (see place_images), streamed by _host_batches."""
    order = torch.randperm(len(images), generator=generator)
    n = len(order) // batch_size * batch_size if drop_last else len(order)  # batch norm needs company
    if images.device == device:
        order = order.to(device)
        batches = ((order[i : i + batch_size], images[order[i : i + batch_size]]) for i in range(0, n, batch_size))
    else:
        batches = _host_batches(images, order[:n], batch_size, device)
    for idx, batch in batches:
        x = augmented_batch(batch.unsqueeze(1), aug_strength, generator, intensity=aug_intensity)
        yield idx, x.contiguous(memory_format=torch.channels_last)


def _host_batches(images: torch.Tensor, order: torch.Tensor, batch_size: int, device: torch.device):
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


def train_one_epoch(
    model, optimizer, scheduler, images, targets, male, cfg: TrainConfig, generator: torch.Generator, scaler
) -> float:
    """One pass over the training images in a seeded random order; returns the mean loss."""
    model.train()
    device = targets.device
    total = torch.zeros((), device=device)
    n_batches = 0
    batches = training_batches(
        images, male, cfg.batch_size, cfg.aug_strength, generator, device, aug_intensity=cfg.aug_intensity
    )
    for idx, x in batches:
        with autocast_for(cfg, device):
            pred = model(x, male[idx])
        loss = loss_fn(cfg.loss, pred.float(), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach()  # summed on the device: no CPU-GPU sync per step
        n_batches += 1
    return float(total) / max(n_batches, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: BoneAgeNet, images: torch.Tensor, male: torch.Tensor, cfg: TrainConfig) -> None:
    """Re-estimate batch-norm statistics on un-augmented training images before evaluating.

    The running statistics were gathered on augmented batches (shifted brightness, contrast, scale);
    evaluating plain images with them biased predictions by 10+ months on the phantom. Same remedy as
    torch.optim.swa_utils.update_bn: reset, then a cumulative average over a forward pass."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all batches below
    model.train()
    n = min(len(images), BN_RECALIBRATION_IMAGES)
    for start in range(0, n, EVAL_BATCH):
        x = _plain_batch(images, start, min(start + EVAL_BATCH, n), male.device)
        with autocast_for(cfg, male.device):
            model(x, male[start : start + x.shape[0]])
    for bn, momentum in momenta.items():
        bn.momentum = momentum


@torch.no_grad()
def evaluate(model: BoneAgeNet, images: torch.Tensor, male: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Normalized predictions for all images, averaged over a horizontal flip when cfg.tta_flip."""
    model.eval()
    preds = []
    for start in range(0, len(images), EVAL_BATCH):
        x = _plain_batch(images, start, start + EVAL_BATCH, male.device)
        sex = male[start : start + EVAL_BATCH]
        with autocast_for(cfg, male.device):
            p = model(x, sex).float()
            if cfg.tta_flip:
                p = (p + model(torch.flip(x, dims=[3]), sex).float()) / 2
        preds.append(p)
    return torch.cat(preds)


def _plain_batch(images: torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Un-augmented standardized images[start:stop] on the device, channels_last."""
    batch = images[start:stop].to(device, non_blocking=True)
    return normalize(batch.unsqueeze(1)).contiguous(memory_format=torch.channels_last)


ACTIVATION_BYTES_PER_PIXEL = 4000  # ResNet-50 training, per image pixel, fp32 with margin (bf16 needs about half)
MODEL_BYTES_PER_PARAMETER = 16  # weight, gradient and two Adam moments, fp32


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


def _to_device(split: Split, device: torch.device, placement: str = "device"):
    """The split's images on the device, or in pinned host memory (placement 'host'); sex always on
    the device."""
    images = torch.from_numpy(np.ascontiguousarray(split.images))
    images = images.to(device) if placement == "device" else images.pin_memory()
    male = torch.from_numpy(np.array(split.male, dtype=bool)).to(device)
    return images, male


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a checkpoint under its final name is always complete


def _resume(ckpt: Path, cfg: TrainConfig, model, optimizer, scheduler, generator, scaler, result: FitResult) -> int:
    """Load a checkpoint written by the same config; the number of epochs it holds.

    Loaded on the CPU: load_state_dict then places each tensor where its module or optimizer lives,
    while the generator state must stay a CPU byte tensor (map_location=cuda would move it there)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupted (a full disk, a copy cut short): as if absent
        log.warning("checkpoint %s is unreadable (%s); training this seed from the start", ckpt, type(exc).__name__)
        return 0
    if json.loads(state["config"]) != cfg.to_dict():
        raise BoneAgeError(f"checkpoint {ckpt} was written by another config; delete it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    result.history = json.loads(state["history"])
    final = json.loads(state.get("final_eval", "null"))
    if final is not None:  # finished: the predictions of its last evaluation, as they were
        result.pred_months = np.asarray(final["pred"], dtype=np.float64)
        if final.get("pred_without_bn_reestimation") is not None:
            result.pred_months_without_bn_reestimation = np.asarray(final["pred_without_bn_reestimation"])
    log.info("resuming from %s after epoch %d", ckpt, len(result.history))
    return len(result.history)


def _predict(model, images, male, cfg: TrainConfig, mean: float, std: float) -> np.ndarray:
    return (evaluate(model, images, male, cfg) * std + mean).cpu().numpy().astype(np.float64)


def fit(
    cfg: TrainConfig,
    train: Split,
    val: Split,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint: str | Path | None = None,
    quiet: bool = True,
    eval_each_epoch: bool = True,
    eval_without_bn_reestimation: bool = False,
    memory_share: float = 1.0,
) -> FitResult:
    """Train cfg on train, evaluate MAE in months on val after every epoch (or only after the last,
    when val is a test set that must not be looked at along the way).

    Evaluation re-estimates batch-norm statistics on un-augmented training images first (see
    recalibrate_batchnorm); eval_without_bn_reestimation also keeps the last epoch's predictions
    without that step. With checkpoint, every epoch is saved there and a rerun with the same config
    resumes after the last saved epoch; a finished checkpoint gives back its predictions.
    memory_share: the part of the GPU's memory this process may plan for (1/K for K workers on it).
    """
    check_config(cfg)
    if cfg.batch_size > len(train):
        raise BoneAgeError(f"train.batch_size = {cfg.batch_size} is above the {len(train)} training images")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest kernels once
    seed_everything(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    steps = cfg.epochs * (len(train) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cfg.schedule == "cosine" else None
    # fp16 needs loss scaling (its range underflows small gradients); its state is checkpointed
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(cfg, device) == torch.float16)

    mean, std = float(np.mean(train.age_months)), float(np.std(train.age_months)) or 1.0
    placement = place_images(cfg, [train, val], model, device, memory_share)
    tr_images, tr_male = _to_device(train, device, placement)
    tr_targets = torch.from_numpy((np.asarray(train.age_months, np.float32) - mean) / std).to(device)
    va_images, va_male = _to_device(val, device, placement)

    result = FitResult()
    ckpt = Path(checkpoint) if checkpoint else None
    resumable = ckpt is not None and ckpt.is_file()
    start_epoch = _resume(ckpt, cfg, model, optimizer, scheduler, generator, scaler, result) if resumable else 0
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(
            model, optimizer, scheduler, tr_images, tr_targets, tr_male, cfg, generator, scaler
        )
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1} (lr {cfg.lr:g})")
        row = {"epoch": epoch + 1, "train_loss": train_loss}
        last = epoch + 1 == cfg.epochs
        if eval_each_epoch or last:
            if last and eval_without_bn_reestimation:
                result.pred_months_without_bn_reestimation = _predict(model, va_images, va_male, cfg, mean, std)
            recalibrate_batchnorm(model, tr_images, tr_male, cfg)
            pred = _predict(model, va_images, va_male, cfg, mean, std)
            if not np.all(np.isfinite(pred)):
                raise TrainingDiverged(f"predictions became non-finite in epoch {epoch + 1} (lr {cfg.lr:g})")
            metrics = regression_metrics(pred, val.age_months, val.male)
            row.update(val_mae_months=metrics["mae_months"], val_rmse_months=metrics["rmse_months"])
            result.pred_months, result.metrics = pred, metrics
        row["epoch_time_s"] = time.perf_counter() - t0
        result.history.append(row)
        if not quiet:
            print(json.dumps(row), flush=True)
        if ckpt is not None:
            final = None
            if last:
                raw = result.pred_months_without_bn_reestimation
                final = {"pred": pred.tolist(), "pred_without_bn_reestimation": None if raw is None else raw.tolist()}
            _save_checkpoint(
                ckpt,
                {
                    "config": json.dumps(cfg.to_dict()),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": json.dumps(result.history),
                    "final_eval": json.dumps(final),
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if result.pred_months is None:  # resumed after the last epoch from an older checkpoint: evaluate once
        result.pred_months = _predict(model, va_images, va_male, cfg, mean, std)
    if not result.metrics:  # resumed from a finished checkpoint, whose predictions it holds
        result.metrics = regression_metrics(result.pred_months, val.age_months, val.male)
    result.model, result.target_mean, result.target_std = model, mean, std
    return result


def predict_months(result: FitResult, split: Split, cfg: TrainConfig) -> np.ndarray:
    """Predictions in months of a fitted model on any split (cfg.tta_flip decides on flip averaging)."""
    device = next(result.model.parameters()).device
    images, male = _to_device(split, device, place_images(cfg, [split], result.model, device, 1.0))
    return (evaluate(result.model, images, male, cfg) * result.target_std + result.target_mean).cpu().numpy()
