"""Training and evaluation in months: fit(config, train, eval_split, on_epoch_end) -> FitResult.

The images of both splits live as one uint8 tensor each, on the GPU when they fit there (else in pinned
host memory, see boneage_core.device), so a batch is an index into memory plus tensor augmentation: no
decoding, no DataLoader workers. fit() calls on_epoch_end(epoch, metrics) after each epoch; whatever
that raises (the search raises optuna.TrialPruned there) goes straight through.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from boneage_core.augment import augmented_batch, normalize
from boneage_core.checkpoint import TrainingState, restore_checkpoint, save_checkpoint
from boneage_core.device import autocast_dtype, autocast_for, host_batches, place_images, resolve_device, split_tensors
from boneage_core.errors import BoneAgeError, TrainingDiverged
from boneage_core.metrics import regression_metrics
from boneage_core.models import build_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from boneage_core.config import TrainConfig
    from boneage_core.dataset import Split
    from boneage_core.models import BoneAgeNet

EVAL_BATCH = 128
BN_RECALIBRATION_IMAGES = 256  # enough for stable statistics; bounds the cost per evaluation


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    pred_months: np.ndarray | None = None  # predictions of the last evaluation, on the evaluation split
    metrics: dict[str, float] = field(default_factory=dict)  # full metrics of the last evaluation
    # the last epoch's predictions with the batch-norm statistics gathered during training, as the
    # original project evaluated (only when fit was asked for them)
    pred_months_without_bn_reestimation: np.ndarray | None = None
    model: BoneAgeNet | None = None
    target_mean: float = 0.0  # months: the model predicts (age - mean) / std of the training ages
    target_std: float = 1.0
    restored_epochs: int = 0  # the first epochs of history, read back from a checkpoint an earlier run wrote

    @property
    def restored_time_s(self) -> float:
        """The training time of the epochs read back from a checkpoint, as the run that trained them
        recorded it: add it to a rerun's wall time for what the model cost to train."""
        return float(sum(row.get("epoch_time_s", 0.0) for row in self.history[: self.restored_epochs]))


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
    batch_size: int,
    aug_strength: float,
    generator: torch.Generator,
    device: torch.device,
    drop_last: bool = True,
    aug_intensity: bool = True,
):
    """One epoch of (index, augmented standardized batch) in a seeded random order: the whole data path.

    images live on the device when they fit there (a batch is then an index plus tensor ops on the
    device); otherwise in pinned host memory (see boneage_core.device), streamed by host_batches."""
    order = torch.randperm(len(images), generator=generator)
    n = len(order) // batch_size * batch_size if drop_last else len(order)  # batch norm needs company
    if images.device == device:
        order = order.to(device)
        batches = ((order[i : i + batch_size], images[order[i : i + batch_size]]) for i in range(0, n, batch_size))
    else:
        batches = host_batches(images, order[:n], batch_size, device)
    for idx, batch in batches:
        x = augmented_batch(batch.unsqueeze(1), aug_strength, generator, intensity=aug_intensity)
        yield idx, x.contiguous(memory_format=torch.channels_last)


def train_one_epoch(
    state: TrainingState, images: torch.Tensor, targets: torch.Tensor, male: torch.Tensor, cfg: TrainConfig
) -> tuple[float, float]:
    """One pass over the training images in a seeded random order: the mean loss and the mean absolute
    error on the (augmented) batches it trained on, in standardized units (times the ages' SD: months)."""
    state.model.train()
    device = targets.device
    total, total_abs = torch.zeros((), device=device), torch.zeros((), device=device)
    n_batches = 0
    batches = training_batches(
        images, cfg.batch_size, cfg.aug_strength, state.generator, device, aug_intensity=cfg.aug_intensity
    )
    for idx, x in batches:
        with autocast_for(cfg, device):
            pred = state.model(x, male[idx])
        loss = loss_fn(cfg.loss, pred.float(), targets[idx])
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.scheduler is not None:
            state.scheduler.step()
        total += loss.detach()  # summed on the device: no CPU-GPU sync per step
        total_abs += (pred.detach().float() - targets[idx]).abs().mean()
        n_batches += 1
    n = max(n_batches, 1)
    return float(total) / n, float(total_abs) / n


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


@dataclass
class FitTensors:
    """Both splits as fit reads them: each split's images where place_images put them (on the device, or
    pinned in host memory and streamed), sex on the device, and the training targets standardized."""

    train_images: torch.Tensor
    train_male: torch.Tensor
    train_targets: torch.Tensor  # (age - mean) / std of the training ages
    eval_images: torch.Tensor
    eval_male: torch.Tensor


def fit_tensors(
    train: Split, eval_split: Split, device: torch.device, placement: str, mean: float, std: float
) -> FitTensors:
    """The tensors fit trains and evaluates on: placement 'device' or 'host' (boneage_core.device.place_images
    decides), mean and std those of the training ages."""
    tr_images, tr_male = split_tensors(train, device, placement)
    targets = torch.from_numpy((np.asarray(train.age_months, np.float32) - mean) / std).to(device)
    ev_images, ev_male = split_tensors(eval_split, device, placement)
    return FitTensors(tr_images, tr_male, targets, ev_images, ev_male)


def new_training_state(cfg: TrainConfig, n_train: int, device: torch.device) -> TrainingState:
    """What fit steps through, fresh: the model on the device (channels_last), its optimizer, the LR
    schedule over cfg.epochs of n_train images, the loss scaler (on for fp16) and the batch-order
    generator seeded with cfg.seed."""
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    steps = cfg.epochs * (n_train // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cfg.schedule == "cosine" else None
    # fp16 needs loss scaling (its range underflows small gradients); its state is checkpointed
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(cfg, device) == torch.float16)
    return TrainingState(model, optimizer, scheduler, scaler, torch.Generator().manual_seed(cfg.seed))


def _predict(model, images, male, cfg: TrainConfig, mean: float, std: float) -> np.ndarray:
    return (evaluate(model, images, male, cfg) * std + mean).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class _Evaluation:
    """One evaluation of the model on the evaluation split, in months."""

    pred_months: np.ndarray  # batch-norm statistics re-estimated first (the protocol)
    metrics: dict[str, float]  # regression_metrics of pred_months
    pred_months_without_bn_reestimation: np.ndarray | None = None  # only when asked for


def _evaluate_epoch(
    cfg: TrainConfig,
    model: BoneAgeNet,
    data: FitTensors,
    eval_split: Split,
    *,
    epoch: int,
    mean: float,
    std: float,
    keep_without_bn_reestimation: bool,
) -> _Evaluation:
    """The protocol's evaluation after an epoch (batch-norm statistics re-estimated first); with
    keep_without_bn_reestimation also the predictions without that step, as the original project evaluated."""
    without = None
    if keep_without_bn_reestimation:  # before the statistics are re-estimated below
        without = _predict(model, data.eval_images, data.eval_male, cfg, mean, std)
    recalibrate_batchnorm(model, data.train_images, data.train_male, cfg)
    pred = _predict(model, data.eval_images, data.eval_male, cfg, mean, std)
    if not np.all(np.isfinite(pred)):
        raise TrainingDiverged(f"predictions became non-finite in epoch {epoch} (lr {cfg.lr:g})")
    return _Evaluation(pred, regression_metrics(pred, eval_split.age_months, eval_split.male), without)


@dataclass(frozen=True)
class _Epoch:
    """One epoch as fit records it: its history row, and its evaluation when it had one."""

    row: dict  # epoch, train_loss, train_mae_months, [val_mae_months, val_rmse_months,] epoch_time_s
    evaluation: _Evaluation | None


def _epoch(
    cfg: TrainConfig,
    state: TrainingState,
    data: FitTensors,
    eval_split: Split,
    *,
    epoch: int,
    mean: float,
    std: float,
    evaluate: bool,
    keep_without_bn_reestimation: bool,
) -> _Epoch:
    """One epoch of training, evaluated when asked. The row's val_* keys are the evaluation split's
    figures, whichever split that is (retrain evaluates on test): the key is what stored histories hold."""
    t0 = time.perf_counter()
    loss, abs_err = train_one_epoch(state, data.train_images, data.train_targets, data.train_male, cfg)
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss became {loss} in epoch {epoch} (lr {cfg.lr:g})")
    row: dict = {"epoch": epoch, "train_loss": loss, "train_mae_months": abs_err * std}
    evaluation = None
    if evaluate:
        evaluation = _evaluate_epoch(
            cfg, state.model, data, eval_split, epoch=epoch, mean=mean, std=std,
            keep_without_bn_reestimation=keep_without_bn_reestimation,
        )  # fmt: skip
        row["val_mae_months"] = evaluation.metrics["mae_months"]
        row["val_rmse_months"] = evaluation.metrics["rmse_months"]
    row["epoch_time_s"] = time.perf_counter() - t0
    return _Epoch(row, evaluation)


def _keep(result: FitResult, evaluation: _Evaluation) -> None:
    """The latest evaluation into the fit's result (predictions without re-estimation only where taken)."""
    result.pred_months, result.metrics = evaluation.pred_months, evaluation.metrics
    if evaluation.pred_months_without_bn_reestimation is not None:
        result.pred_months_without_bn_reestimation = evaluation.pred_months_without_bn_reestimation


def _final_eval(result: FitResult) -> dict:
    without = result.pred_months_without_bn_reestimation
    return {
        "pred": result.pred_months.tolist(),
        "pred_without_bn_reestimation": None if without is None else without.tolist(),
    }


def _resume(result: FitResult, restored) -> None:
    """The epochs a checkpoint holds, and a finished one's predictions, as if trained here."""
    result.history, result.pred_months = restored.history, restored.pred_months
    result.restored_epochs = len(restored.history)
    result.pred_months_without_bn_reestimation = restored.pred_months_without_bn_reestimation


def _epoch_bar(progress: str | None, epochs: int, done: int):
    """A bar over a fit's epochs, or None: ETA from the epochs so far, the last MAE in months."""
    if progress is None:
        return None
    return tqdm(total=epochs, initial=done, desc=progress, unit="epoch", dynamic_ncols=True, leave=True)


def _advance(bar, row: dict, eval_label: str) -> None:
    if bar is None:
        return
    if "val_mae_months" in row:  # the evaluation split's MAE, whichever split that is
        bar.set_postfix_str(f"{eval_label} MAE {row['val_mae_months']:.2f} months", refresh=False)
    else:
        bar.set_postfix_str(f"train MAE {row['train_mae_months']:.2f} months (augmented)", refresh=False)
    bar.update(1)


def fit(
    cfg: TrainConfig,
    train: Split,
    eval_split: Split,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint: str | Path | None = None,
    eval_each_epoch: bool = True,
    eval_without_bn_reestimation: bool = False,
    memory_share: float = 1.0,
    progress: str | None = None,
    eval_label: str = "val",
) -> FitResult:
    """Train cfg on train, evaluate MAE in months on eval_split after every epoch (or only after the
    last, when eval_split is a test set that must not be looked at along the way).

    Evaluation re-estimates batch-norm statistics on un-augmented training images first (see
    recalibrate_batchnorm); eval_without_bn_reestimation also keeps the last epoch's predictions
    without that step. With checkpoint, every epoch is saved there and a rerun with the same config
    resumes after the last saved epoch; a finished checkpoint gives back its predictions.
    memory_share: the part of the GPU's memory this process may plan for (1/K for K workers on it).
    progress: a description for a progress bar over the epochs (on stderr), None for none; eval_label
    names the evaluation split on it.
    """
    if cfg.batch_size > len(train):
        raise BoneAgeError(f"train.batch_size = {cfg.batch_size} is above the {len(train)} training images")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest kernels once
    seed_everything(cfg.seed)
    state = new_training_state(cfg, len(train), device)
    mean, std = float(np.mean(train.age_months)), float(np.std(train.age_months)) or 1.0
    placement = place_images(cfg, [train, eval_split], state.model, device, memory_share)
    data = fit_tensors(train, eval_split, device, placement, mean, std)
    result = FitResult(target_mean=mean, target_std=std)
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        _resume(result, restore_checkpoint(ckpt, cfg, state))
    bar = _epoch_bar(progress, cfg.epochs, len(result.history))
    try:
        for epoch in range(len(result.history) + 1, cfg.epochs + 1):
            last = epoch == cfg.epochs
            done = _epoch(
                cfg, state, data, eval_split, epoch=epoch, mean=mean, std=std, evaluate=eval_each_epoch or last,
                keep_without_bn_reestimation=last and eval_without_bn_reestimation,
            )  # fmt: skip
            if done.evaluation is not None:
                _keep(result, done.evaluation)
            result.history.append(done.row)
            _advance(bar, done.row, eval_label)
            if ckpt is not None:
                save_checkpoint(ckpt, cfg, state, result.history, _final_eval(result) if last else None)
            if on_epoch_end is not None:
                on_epoch_end(epoch, done.row)
    finally:  # closed before any error is printed: the error is the last line, never glued to a bar
        if bar is not None:
            bar.close()
    if not result.metrics:  # resumed from a finished checkpoint, whose predictions it holds
        result.metrics = regression_metrics(result.pred_months, eval_split.age_months, eval_split.male)
    result.model = state.model
    return result


def predict_months(result: FitResult, split: Split, cfg: TrainConfig) -> np.ndarray:
    """Predictions in months of a fitted model on any split (cfg.tta_flip decides on flip averaging)."""
    device = next(result.model.parameters()).device
    images, male = split_tensors(split, device, place_images(cfg, [split], result.model, device, 1.0))
    return (evaluate(result.model, images, male, cfg) * result.target_std + result.target_mean).cpu().numpy()
