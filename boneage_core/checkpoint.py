"""A fit's checkpoint: everything needed to go on after the last saved epoch (model, optimizer, schedule,
loss scaler, random generator, history) and, once finished, the predictions of its last evaluation.

Written under a temporary name and renamed, so a checkpoint under its final name is always complete;
loaded on the CPU with weights_only=True."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from boneage_core.errors import BoneAgeError, cannot_write
from boneage_core.files import remove_abandoned_tmp, written_into_place

if TYPE_CHECKING:
    from pathlib import Path

    from boneage_core.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingState:
    """What a fit updates step by step, saved and restored as one."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LR scheduler or None
    scaler: torch.amp.GradScaler
    generator: torch.Generator


@dataclass
class Restored:
    history: list[dict]
    pred_months: np.ndarray | None = None  # only from a finished checkpoint
    pred_months_without_bn_reestimation: np.ndarray | None = None


def save_checkpoint(
    path: Path, cfg: TrainConfig, state: TrainingState, history: list[dict], final: dict | None
) -> None:
    """final: {'pred': [...], 'pred_without_bn_reestimation': [...] or None} once the fit has finished."""
    payload = {
        "config": json.dumps(cfg.to_dict()),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else {},
        "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
        "history": json.dumps(history),
        "final_eval": json.dumps(final),
    }
    buffer = io.BytesIO()  # serialized first: torch.save to a file turns a full disk into a RuntimeError
    torch.save(payload, buffer)
    try:
        remove_abandoned_tmp(path)  # a save cut short by kill -9 (checkpoints are large)
        with written_into_place(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    except OSError as exc:
        raise cannot_write(f"the checkpoint {path}", exc, "free some space, or delete checkpoints/") from None


def restore_checkpoint(path: Path, cfg: TrainConfig, state: TrainingState) -> Restored:
    """The state of a checkpoint written by the same config, loaded into `state`; an unreadable one
    (truncated by a full disk, a copy cut short) counts as absent: the fit starts over.

    Loaded on the CPU: load_state_dict then places each tensor where its module or optimizer lives,
    while the generator state must stay a CPU byte tensor (map_location=cuda would move it there)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        log.warning("checkpoint %s is unreadable (%s); training this seed from the start", path, type(exc).__name__)
        return Restored(history=[])
    if not {"config", "model", "optimizer", "generator", "history", "final_eval"} <= set(saved):
        raise BoneAgeError(f"checkpoint {path} was written by an older version; delete it to start over")
    if json.loads(saved["config"]) != cfg.to_dict():
        raise BoneAgeError(f"checkpoint {path} was written by another config; delete it to start over")
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(saved["scheduler"])
    state.generator.set_state(saved["generator"])
    if saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    out = Restored(history=json.loads(saved["history"]))
    final = json.loads(saved["final_eval"])
    if final is not None:
        out.pred_months = np.asarray(final["pred"], dtype=np.float64)
        if final.get("pred_without_bn_reestimation") is not None:
            out.pred_months_without_bn_reestimation = np.asarray(final["pred_without_bn_reestimation"])
    log.info("resuming from %s after epoch %d", path, len(out.history))
    return out
