"""What a trial and a command write to the study as they go: per-epoch history, the final val metrics and
predictions, the images left out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from boneage_core.rsna import Skipped

SKIPPED_ATTR = "skipped_images"
VAL_PREDICTIONS_ATTR = "val_pred_months"


def epoch_recorder(trial: optuna.Trial, start: float) -> Callable[[int, dict], None]:
    """fit's on_epoch_end for a trial: record the epoch (history, epochs run, wall time), report val MAE,
    raise TrialPruned to prune. What a search trial writes to the study per epoch; the storage benchmark
    writes through it too."""
    history: list[dict] = []

    def on_epoch_end(epoch: int, row: dict) -> None:
        history.append(row)
        trial.set_user_attr("history", history)
        trial.set_user_attr("epochs_run", epoch)
        trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
        trial.report(row["val_mae_months"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val MAE {row['val_mae_months']:.2f} months after epoch {epoch}")

    return on_epoch_end


def record_outcome(trial: optuna.Trial, start: float, metrics: dict[str, float], val_pred) -> None:
    """What a completed trial writes at its end: wall time, val metrics and its prediction for every val
    image in the split's order (what retrain --bias-correction fits its line on). The storage benchmark
    writes through it too."""
    trial.set_user_attr("wall_time_s", round(time.perf_counter() - start, 2))
    trial.set_user_attr("val_metrics", metrics)
    trial.set_user_attr(VAL_PREDICTIONS_ATTR, [round(float(p), 2) for p in val_pred])


def record_skipped(study: optuna.Study, skipped: list[Skipped]) -> None:
    """Which labelled images the study's commands left out and why, {"split/id": reason}: the search
    records those of train and val, retrain adds the test set's. Written only when it grows."""
    known = dict(study.user_attrs.get(SKIPPED_ATTR, {}))
    grown = {**known, **{f"{s.split}/{s.id}": s.reason for s in skipped}}
    if grown != known:
        study.set_user_attr(SKIPPED_ATTR, grown)
