"""What a trial and a command write to the study as they go: the trial's config, per-epoch history, the
final val metrics and predictions, the images left out.

A trial's long data (its config, history and val predictions: hundreds to thousands of characters)
is kept as system attrs of the trial, in the same database, read back with trial_data. As user
attrs, optuna-dashboard listed each on the trial page as one unwrapped line, about 5,000 px wide; the
user attrs keep what reads at a glance (epochs run, wall time, why it failed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from search.storage.writes import finite

if TYPE_CHECKING:
    from boneage_core.rsna import Skipped

SKIPPED_ATTR = "skipped_images"
CONFIG_ATTR, HISTORY_ATTR = "config", "history"
VAL_METRICS_ATTR, VAL_PREDICTIONS_ATTR = "val_metrics", "val_pred_months"


def set_trial_data(trial: optuna.Trial, key: str, value: Any) -> None:
    """Long per-trial data, stored with the trial (NaN as null). Optuna has no public setter for a
    trial's system attrs; its storage's own method with the trial's id is what Optuna itself uses."""
    trial.storage.set_trial_system_attr(trial._trial_id, key, finite(value))


def trial_data(trial: optuna.trial.FrozenTrial, key: str) -> Any:
    """A trial's long data (CONFIG_ATTR, HISTORY_ATTR, VAL_METRICS_ATTR, VAL_PREDICTIONS_ATTR), or None; a study made
    before it moved out of the user attrs is read there."""
    return trial.system_attrs.get(key, trial.user_attrs.get(key))


def epoch_recorder(trial: optuna.Trial, start: float) -> Callable[[int, dict], None]:
    """fit's on_epoch_end for a trial: record the epoch (history, epochs run, wall time), report val MAE,
    raise TrialPruned to prune. What a search trial writes to the study per epoch; the storage benchmark
    writes through it too."""
    history: list[dict] = []

    def on_epoch_end(epoch: int, row: dict) -> None:
        history.append(row)
        set_trial_data(trial, HISTORY_ATTR, history)
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
    set_trial_data(trial, VAL_METRICS_ATTR, metrics)
    set_trial_data(trial, VAL_PREDICTIONS_ATTR, [round(float(p), 2) for p in val_pred])


def record_skipped(study: optuna.Study, skipped: list[Skipped]) -> None:
    """Which labelled images the study's commands left out and why, {"split/id": reason}: the search
    records those of train and val, retrain adds the test set's. Written only when it grows."""
    known = dict(study.user_attrs.get(SKIPPED_ATTR, {}))
    grown = {**known, **{f"{s.split}/{s.id}": s.reason for s in skipped}}
    if grown != known:
        study.set_user_attr(SKIPPED_ATTR, grown)
